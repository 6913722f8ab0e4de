//! The lab's network scenarios: a lossy, slow, reordering link; partitions; a relay killed again and again;
//! a client that changes address. Each returns its figures as lines of text, or fails saying what broke.

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::forwarder::{Control, Impairment};
use super::helpers::pattern;
use super::net::{Host, Link};
use super::terminal::{Terminal, numbered_lines, sequence_faults};
use super::{Lab, Running, floods, start_until, timed, wait_child};

const MIB: u64 = 1 << 20;

/// Runs scenario `name`.
pub(crate) fn run(name: &str, lab: &mut Lab) -> Result<Vec<String>> {
    match name {
        "lossy" => lossy(lab),
        "partition" => partition(lab),
        "relay-kill" => relay_kill(lab),
        "roaming" => roaming(lab),
        "streams" => floods::streams(lab),
        "slow-reader" => floods::slow_reader(lab),
        "handshakes" => floods::handshakes(lab),
        "no-dial-out" => floods::no_dial_out(lab),
        other => bail!("no scenario `{other}`"),
    }
}

/// Writes `len` bytes of the seeded pattern to `path`.
pub(crate) fn make_file(path: &Path, len: u64, seed: u64) -> Result<()> {
    let mut out = BufWriter::new(
        File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
    );
    let mut chunk = vec![0u8; MIB as usize];
    let mut offset = 0;
    while offset < len {
        let take = (len - offset).min(MIB);
        let part = chunk.get_mut(..usize::try_from(take)?).context("chunk")?;
        pattern(seed, offset, part);
        out.write_all(part)?;
        offset += take;
    }
    out.flush()?;
    Ok(())
}

/// Whether two files hold the same bytes.
pub(crate) fn same_bytes(a: &Path, b: &Path) -> Result<bool> {
    let (mut fa, mut fb) = (
        File::open(a).with_context(|| format!("cannot open {}", a.display()))?,
        File::open(b).with_context(|| format!("cannot open {}", b.display()))?,
    );
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        let got = ba.get(..n).context("chunk")?;
        let other = bb.get_mut(..n).context("chunk")?;
        fb.read_exact(other)?;
        if got != other {
            return Ok(false);
        }
    }
}

/// The largest partial file (`….cmdop-part`) in `dir`, bytes.
pub(crate) fn partial_size(dir: &Path) -> u64 {
    fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".cmdop-part"))
            .filter_map(|e| e.metadata().ok().map(|m| m.len()))
            .max()
            .unwrap_or(0)
    })
}

/// `cmdop connect cp --json ARGS…` through the lab's client.
pub(crate) fn cp(lab: &Lab, args: &[&str]) -> std::process::Command {
    let mut command = lab.contour.cli();
    command.args(["connect", "cp", "--json"]).args(args);
    command
}

/// `MACHINE:PATH` for the lab's agent.
pub(crate) fn remote(lab: &Lab, path: &Path) -> String {
    format!("{}:{}", lab.contour.machine, path.display())
}

/// A fresh directory under the lab's scratch space.
pub(crate) fn fresh_dir(lab: &Lab, name: &str) -> Result<PathBuf> {
    let dir = lab.dir.join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// `N MiB`, or `N KiB` below one MiB.
fn size_text(bytes: u64) -> String {
    if bytes >= MIB {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{} KiB", bytes / 1024)
    }
}

fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / MIB as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// Copies `source` to the agent and back under the current impairments, checking both copies.
fn cp_round_trip(lab: &Lab, source: &Path, dir: &Path, figures: &mut Vec<String>) -> Result<()> {
    let len = fs::metadata(source)?.len();
    let up_dir = dir.join("up");
    let down_dir = dir.join("down");
    fs::create_dir_all(&up_dir)?;
    fs::create_dir_all(&down_dir)?;
    let push = timed(
        &mut cp(
            lab,
            &[
                &source.to_string_lossy(),
                &format!("{}/", remote(lab, &up_dir)),
            ],
        ),
        Duration::from_secs(600),
    )?;
    let pushed = up_dir.join(source.file_name().context("name")?);
    if !push.status.success() {
        bail!(
            "cp to the machine failed ({}): {}",
            push.status,
            push.stderr.trim()
        );
    }
    if !same_bytes(source, &pushed)? {
        bail!("cp to the machine reported success but the copy differs from the source");
    }
    let pull = timed(
        &mut cp(lab, &[&remote(lab, &pushed), &down_dir.to_string_lossy()]),
        Duration::from_secs(600),
    )?;
    if !pull.status.success() {
        bail!(
            "cp from the machine failed ({}): {}",
            pull.status,
            pull.stderr.trim()
        );
    }
    if !same_bytes(source, &down_dir.join(source.file_name().context("name")?))? {
        bail!("cp from the machine reported success but the copy differs from the source");
    }
    figures.push(format!(
        "`cp` of {} to the machine: {:.1} s ({:.3} MiB/s), and back: {:.1} s ({:.3} MiB/s); both copies \
         byte-identical to the source",
        size_text(len),
        push.elapsed.as_secs_f64(),
        mib_per_s(len, push.elapsed),
        pull.elapsed.as_secs_f64(),
        mib_per_s(len, pull.elapsed)
    ));
    Ok(())
}

/// A download through `cmdop connect forward`: the HTTP server's port on the agent's loopback, the forward's
/// local port on the client, how long the server serves and the download may take, and the step's timeout.
pub(super) struct ForwardedDownload {
    pub(super) server_port: u16,
    pub(super) local_port: u16,
    pub(super) serve_seconds: u64,
    pub(super) get_seconds: u64,
    pub(super) timeout: Duration,
}

impl ForwardedDownload {
    /// Serves `source` over HTTP on the agent's loopback, forwards a local port to it with `cmdop connect
    /// forward`, and downloads it into `out` on the client; the server and the forward stop on return.
    pub(super) fn run(&self, lab: &Lab, source: &Path, out: &Path) -> Result<super::Timed> {
        let server = format!("127.0.0.1:{}", self.server_port);
        let local = format!("127.0.0.1:{}", self.local_port);
        let _server = Running(start_until(
            &mut lab.helper(
                Host::Agent,
                "serve",
                &[
                    "--listen",
                    &server,
                    "--file",
                    &source.to_string_lossy(),
                    "--seconds",
                    &self.serve_seconds.to_string(),
                ],
            ),
            "listening",
            |line| line.contains("listening"),
        )?);
        let _forward = lab.forward(&format!("{local}:{server}"))?;
        timed(
            &mut lab.helper(
                Host::Client,
                "get",
                &[
                    "--connect",
                    &local,
                    "--out",
                    &out.to_string_lossy(),
                    "--seconds",
                    &self.get_seconds.to_string(),
                ],
            ),
            self.timeout,
        )
    }
}

/// Downloads `source` over HTTP through `cmdop connect forward` from a server on the agent's loopback.
fn forward_download(lab: &Lab, source: &Path, dir: &Path, figures: &mut Vec<String>) -> Result<()> {
    let len = fs::metadata(source)?.len();
    let out = dir.join("download.bin");
    let get = ForwardedDownload {
        server_port: 8000,
        local_port: 18080,
        serve_seconds: 900,
        get_seconds: 600,
        timeout: Duration::from_secs(660),
    }
    .run(lab, source, &out)?;
    if !get.status.success() {
        bail!(
            "the HTTP download through the forward failed: {}{}",
            get.stdout.trim(),
            get.stderr.trim()
        );
    }
    if !same_bytes(source, &out)? {
        bail!("the HTTP download through the forward is not byte-identical to the served file");
    }
    figures.push(format!(
        "HTTP download of {} through `cmdop connect forward`: {:.1} s ({:.3} MiB/s), byte-identical",
        size_text(len),
        get.elapsed.as_secs_f64(),
        mib_per_s(len, get.elapsed)
    ));
    Ok(())
}

/// Output lines and typed lines through an interactive shell in a terminal; fails on any loss, repeat or
/// reordering.
fn shell_session(
    lab: &Lab,
    output_lines: u64,
    input_lines: u64,
    figures: &mut Vec<String>,
) -> Result<()> {
    let mut command = lab.contour.cli();
    command.args(["connect", &lab.contour.machine, "--escape-char", "none"]);
    let started = Instant::now();
    let mut terminal = Terminal::start(&command)?;
    // The quotes keep the typed command from matching what it prints.
    terminal.type_text("stty -echo; echo READY''MARK\r")?;
    let mut at = terminal.wait_for("READYMARK", 0, Duration::from_secs(60))?;
    let ready = started.elapsed();
    let output_started = Instant::now();
    terminal.type_text(&format!(
        "seq -f 'out%07g' 1 {output_lines}; echo SEQ''DONE\r"
    ))?;
    at = terminal.wait_for("SEQDONE", at, Duration::from_secs(600))?;
    let output_time = output_started.elapsed();
    let shown = terminal.shown();
    let (missing, repeated, reordered) =
        sequence_faults(&numbered_lines(&shown, "out"), output_lines);
    // Input: lines typed into `cat`, in bursts, each burst waited for before the next.
    let input_started = Instant::now();
    terminal.type_text("cat; echo CAT''DONE\r")?;
    thread::sleep(Duration::from_millis(500));
    let burst = 50;
    let mut next = 1;
    while next <= input_lines {
        let last = (next + burst - 1).min(input_lines);
        let text: String = (next..=last).map(|i| format!("in{i:06}\r")).collect();
        terminal.type_text(&text)?;
        at = terminal.wait_for(&format!("in{last:06}"), at, Duration::from_secs(120))?;
        next = last + 1;
    }
    terminal.type_text("\u{4}")?;
    terminal.wait_for("CATDONE", at, Duration::from_secs(60))?;
    let input_time = input_started.elapsed();
    let shown = terminal.shown();
    let (in_missing, in_repeated, in_reordered) =
        sequence_faults(&numbered_lines(&shown, "in"), input_lines);
    let reconnects = shown.matches("reconnecting").count();
    terminal.type_text("exit\r")?;
    let exit = terminal.wait_exit(Duration::from_secs(30))?;
    figures.push(format!(
        "shell in a terminal (`cmdop connect MACHINE`): prompt after {:.1} s; {output_lines} output lines in \
         {:.1} s: {missing} missing, {repeated} repeated, {reordered} out of order; {input_lines} typed lines \
         echoed back by `cat` in {:.1} s: {in_missing} missing, {in_repeated} repeated, {in_reordered} out of \
         order; {reconnects} reconnects; exit {}",
        ready.as_secs_f64(),
        output_time.as_secs_f64(),
        input_time.as_secs_f64(),
        exit.exit_code()
    ));
    if missing + repeated + reordered + in_missing + in_repeated + in_reordered > 0 {
        bail!(
            "the shell lost, repeated or reordered lines: {}",
            figures.last().map_or("", String::as_str)
        );
    }
    Ok(())
}

fn forwarder_line(before: &Value, after: &Value) -> String {
    let delta = |direction: &str, field: &str| {
        after[direction][field]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(before[direction][field].as_u64().unwrap_or(0))
    };
    format!(
        "forwarder, client → relay: {} datagrams passed, {} duplicated, {} reordered, {} refused by the kernel \
         (nftables loss on the way out); relay → client: {} passed, {} duplicated, {} reordered, {} refused",
        delta("up", "passed"),
        delta("up", "duplicated"),
        delta("up", "reordered"),
        delta("up", "refused"),
        delta("down", "passed"),
        delta("down", "duplicated"),
        delta("down", "reordered"),
        delta("down", "refused"),
    )
}

/// 100 ms each way with ±10 ms jitter, 1 % duplicated, 1 % held back 25 ms, and 5 % loss each way.
fn lossy(lab: &mut Lab) -> Result<Vec<String>> {
    let quick = lab.options.quick;
    let impairment = Impairment {
        delay_ms: 100,
        jitter_ms: 10,
        loss_permille: 0,
        duplicate_permille: 10,
        reorder_permille: 10,
    };
    let rebind = lab.control().rebind;
    lab.impair(Control {
        up: impairment,
        down: impairment,
        rebind,
    })?;
    lab.net.set_loss(Link::Client, 5)?;
    let mut figures = vec![
        "client ↔ relay link: 100 ms added each way (+0..10 ms jitter), 1 % of datagrams duplicated, 1 % held \
         back 25 ms (forwarder), 5 % dropped each way (nftables `numgen random mod 100 < 5`)"
            .to_owned(),
    ];
    let before = lab.forwarder_stats();
    let dropped_before = lab.net.dropped_by_rules()?;
    let dir = fresh_dir(lab, "lossy")?;
    let (lines, typed, size) = if quick {
        (2_000, 100, MIB / 4)
    } else {
        (20_000, 500, 8 * MIB)
    };
    let source = dir.join("payload.bin");
    make_file(&source, size, 11)?;
    let mut failures = Vec::new();
    if let Err(e) = shell_session(lab, lines, typed, &mut figures) {
        failures.push(format!("shell: {e:#}"));
    }
    if let Err(e) = cp_round_trip(lab, &source, &dir, &mut figures) {
        failures.push(format!("cp: {e:#}"));
    }
    if let Err(e) = forward_download(lab, &source, &dir, &mut figures) {
        failures.push(format!("forward: {e:#}"));
    }
    figures.push(forwarder_line(&before, &lab.forwarder_stats()));
    figures.push(format!(
        "nftables dropped {} datagrams on the client's link",
        lab.net.dropped_by_rules()?.saturating_sub(dropped_before)
    ));
    if !failures.is_empty() {
        bail!(
            "{}\n\nfigures so far:\n- {}",
            failures.join("\n"),
            figures.join("\n- ")
        );
    }
    Ok(figures)
}

/// Runs `cp` until it succeeds (each run resumes from the partial file), at most `runs` times; returns the
/// runs' summaries (`(status, resumed bytes, seconds)`).
fn cp_until_done(
    lab: &Lab,
    args: &[&str],
    first: Option<Child>,
    runs: usize,
) -> Result<Vec<(String, u64, f64)>> {
    let mut results = Vec::new();
    let mut child = first;
    for _ in 0..runs {
        let started = Instant::now();
        let mut running = match child.take() {
            Some(child) => child,
            None => {
                lab.wait_online(Duration::from_secs(120))?;
                cp(lab, args)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()?
            }
        };
        let stdout = super::read_all(running.stdout.take());
        let stderr = super::read_all(running.stderr.take());
        let status = wait_child(&mut running, Duration::from_secs(1200))?;
        let out = stdout.join().unwrap_or_default();
        let err = stderr.join().unwrap_or_default();
        let resumed = serde_json::from_str::<Value>(out.trim())
            .ok()
            .and_then(|v| v["resumed_bytes"].as_u64())
            .unwrap_or(0);
        let summary = if status.success() {
            "ok".to_owned()
        } else {
            format!("{status}: {}", err.trim().lines().last().unwrap_or(""))
        };
        results.push((summary, resumed, started.elapsed().as_secs_f64()));
        if status.success() {
            return Ok(results);
        }
    }
    bail!("cp did not complete in {runs} runs: {results:?}")
}

fn spawn_cp(lab: &Lab, args: &[&str]) -> Result<Child> {
    Ok(cp(lab, args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?)
}

/// Waits until the partial file in `dir` reaches `bytes` (or `child` exits); fails after `timeout`.
fn wait_partial(dir: &Path, bytes: u64, child: &mut Child, timeout: Duration) -> Result<u64> {
    let deadline = Instant::now() + timeout;
    loop {
        let size = partial_size(dir);
        if size >= bytes {
            return Ok(size);
        }
        if child.try_wait()?.is_some() {
            bail!("cp exited before its partial file reached {bytes} bytes (at {size})");
        }
        if Instant::now() > deadline {
            bail!("the partial file did not reach {bytes} bytes within {timeout:?} (at {size})");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A 30 s cut of one link in the middle of a `cp`, first the client's, then the agent's.
fn partition(lab: &mut Lab) -> Result<Vec<String>> {
    let quick = lab.options.quick;
    let size = if quick { 48 * MIB } else { 192 * MIB };
    let cut_for = Duration::from_secs(30);
    let dir = fresh_dir(lab, "partition")?;
    let source = dir.join("payload.bin");
    make_file(&source, size, 12)?;
    let mut figures = vec![format!(
        "a {} MiB `cp` to the machine over links limited to 80 Mbit/s (tc tbf), cut for {} s (nftables drop \
         both ways) once a quarter had arrived",
        size / MIB,
        cut_for.as_secs()
    )];
    let mut failures = Vec::new();
    for link in [Link::Client, Link::Agent] {
        lab.net.set_bandwidth(Link::Client, 80)?;
        lab.net.set_bandwidth(Link::Agent, 80)?;
        let target = fresh_dir(lab, &format!("partition-{link:?}").to_lowercase())?;
        let args = [
            &*source.to_string_lossy(),
            &*format!("{}/", remote(lab, &target)),
        ]
        .map(str::to_owned);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let started = Instant::now();
        let mut child = spawn_cp(lab, &args)?;
        let at_cut = wait_partial(&target, size / 4, &mut child, Duration::from_secs(300))?;
        let cut_at = started.elapsed();
        lab.net.set_cut(link, true)?;
        let cut_started = Instant::now();
        // Whether, and when, the running cp gives up while the link is cut.
        let mut gave_up = None;
        while cut_started.elapsed() < cut_for {
            if gave_up.is_none() && child.try_wait()?.is_some() {
                gave_up = Some(cut_started.elapsed());
            }
            thread::sleep(Duration::from_millis(100));
        }
        lab.net.set_cut(link, false)?;
        let runs = cp_until_done(lab, &args, Some(child), 5);
        let total = started.elapsed();
        let first_run = match (gave_up, runs.as_ref().ok().and_then(|r| r.first())) {
            (Some(after), _) => format!(
                "the running cp gave up {:.1} s into the cut",
                after.as_secs_f64()
            ),
            (None, Some((status, _, t))) if status == "ok" => {
                format!("the running cp rode out the cut and finished {t:.1} s after it healed")
            }
            (None, Some((_, _, t))) => {
                format!("the running cp gave up {t:.1} s after the cut healed")
            }
            (None, None) => "the running cp never finished".to_owned(),
        };
        match runs {
            Ok(runs) => {
                let intact = same_bytes(&source, &target.join("payload.bin"))?;
                figures.push(format!(
                    "{link:?} link cut at {:.1} s ({} MiB in): {first_run}; {} run(s) of cp in all: {}; done \
                     {:.1} s after the start, {:.1} s after the cut healed; the copy is {}",
                    cut_at.as_secs_f64(),
                    at_cut / MIB,
                    runs.len(),
                    runs.iter()
                        .map(|(s, r, _)| format!("[{s}, resumed {} MiB]", r / MIB))
                        .collect::<Vec<_>>()
                        .join(" "),
                    total.as_secs_f64(),
                    (total.saturating_sub(cut_at + cut_for)).as_secs_f64(),
                    if intact { "byte-identical" } else { "DIFFERENT" }
                ));
                if !intact {
                    failures.push(format!("{link:?}: the copy differs from the source"));
                }
            }
            Err(e) => failures.push(format!("{link:?} link: {e:#}")),
        }
    }
    lab.net.set_bandwidth(Link::Client, 0)?;
    lab.net.set_bandwidth(Link::Agent, 0)?;
    match shell_across_cut(lab, cut_for) {
        Ok(line) => figures.push(line),
        Err(e) => failures.push(format!("shell across the cut: {e:#}")),
    }
    if !failures.is_empty() {
        bail!(
            "{}\n\nfigures so far:\n- {}",
            failures.join("\n"),
            figures.join("\n- ")
        );
    }
    Ok(figures)
}

/// An attached shell printing a numbered line every 100 ms while the client's link is cut for `cut_for`.
fn shell_across_cut(lab: &mut Lab, cut_for: Duration) -> Result<String> {
    let count: u64 = 10 * (cut_for.as_secs() + 20);
    let mut command = lab.contour.cli();
    command.args(["connect", &lab.contour.machine, "--escape-char", "none"]);
    let mut terminal = Terminal::start(&command)?;
    terminal.type_text("stty -echo; echo READY''MARK\r")?;
    let at = terminal.wait_for("READYMARK", 0, Duration::from_secs(60))?;
    terminal.type_text(&format!(
        "i=0; while [ $i -lt {count} ]; do i=$((i+1)); echo p$i; sleep 0.1; done; echo LOOP''DONE\r"
    ))?;
    thread::sleep(Duration::from_secs(5));
    lab.net.set_cut(Link::Client, true)?;
    let before_cut = numbered_lines(&terminal.shown(), "p")
        .last()
        .copied()
        .unwrap_or(0);
    thread::sleep(cut_for);
    lab.net.set_cut(Link::Client, false)?;
    let healed = Instant::now();
    // When output starts flowing again after the heal.
    let mut resumed_after = None;
    let deadline = healed + Duration::from_secs(120);
    while Instant::now() < deadline {
        let last = numbered_lines(&terminal.shown(), "p")
            .last()
            .copied()
            .unwrap_or(0);
        if last > before_cut + 1 {
            resumed_after = Some(healed.elapsed());
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    terminal.wait_for("LOOPDONE", at, Duration::from_secs(180))?;
    let shown = terminal.shown();
    let (missing, repeated, reordered) = sequence_faults(&numbered_lines(&shown, "p"), count);
    let reconnects = shown.matches("reconnecting").count();
    terminal.type_text("exit\r")?;
    let _ = terminal.wait_exit(Duration::from_secs(30));
    let line = format!(
        "attached shell printing {count} numbered lines (one per 100 ms), client link cut for {} s: output \
         resumed {} after the heal; {missing} missing, {repeated} repeated, {reordered} out of order; {reconnects} \
         `connection lost … reconnecting` messages",
        cut_for.as_secs(),
        resumed_after.map_or_else(
            || "never (within 120 s)".to_owned(),
            |d| format!("{:.1} s", d.as_secs_f64())
        )
    );
    if missing + repeated + reordered > 0 || resumed_after.is_none() {
        bail!("{line}");
    }
    Ok(line)
}

/// SIGKILL the relay 10 times during a 1 GiB `cp` (restarting it each time); the copy must finish, verified.
fn relay_kill(lab: &mut Lab) -> Result<Vec<String>> {
    let quick = lab.options.quick;
    let size = if quick { 256 * MIB } else { 1024 * MIB };
    let kills_wanted = 10;
    let dir = fresh_dir(lab, "relay-kill")?;
    let source = dir.join("payload.bin");
    make_file(&source, size, 13)?;
    let target = fresh_dir(lab, "relay-kill-target")?;
    let args = [
        &*source.to_string_lossy(),
        &*format!("{}/", remote(lab, &target)),
    ]
    .map(str::to_owned);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // Slow enough that ten kills fit in one copy: about 40 s for 1 GiB.
    lab.net.set_bandwidth(Link::Client, 240)?;
    let started = Instant::now();
    let mut runs: Vec<(String, u64, f64)> = Vec::new();
    let mut detections = Vec::new();
    let mut child = Some(spawn_cp(lab, &args)?);
    let step = size / (kills_wanted + 2);
    let mut kills = 0u64;
    let mut run_started = Instant::now();
    while kills < kills_wanted {
        let mut running = child.take().context("no cp running")?;
        let reached = match wait_partial(
            &target,
            step * (kills + 1),
            &mut running,
            Duration::from_secs(300),
        ) {
            Ok(size) => size,
            Err(e) => {
                let status = wait_child(&mut running, Duration::from_secs(5)).ok();
                bail!(
                    "before kill {}: {e:#} (cp: {status:?}; runs so far {runs:?})",
                    kills + 1
                );
            }
        };
        let _ = reached;
        lab.contour.kill_relay()?;
        let killed = Instant::now();
        kills += 1;
        lab.contour.restart_relay()?;
        let stdout = super::read_all(running.stdout.take());
        let stderr = super::read_all(running.stderr.take());
        let status = wait_child(&mut running, Duration::from_secs(120))?;
        detections.push(killed.elapsed().as_secs_f64());
        let out = stdout.join().unwrap_or_default();
        let err = stderr.join().unwrap_or_default();
        let resumed = serde_json::from_str::<Value>(out.trim())
            .ok()
            .and_then(|v| v["resumed_bytes"].as_u64());
        runs.push((
            if status.success() {
                "ok".to_owned()
            } else {
                format!("{status}: {}", err.trim().lines().last().unwrap_or(""))
            },
            resumed.unwrap_or(0),
            run_started.elapsed().as_secs_f64(),
        ));
        if status.success() {
            break;
        }
        lab.wait_online(Duration::from_secs(120))?;
        run_started = Instant::now();
        child = Some(spawn_cp(lab, &args)?);
    }
    let last = cp_until_done(lab, &args, child, 5)?;
    runs.extend(last);
    let total = started.elapsed();
    let intact = same_bytes(&source, &target.join("payload.bin"))?;
    let leftovers = partial_size(&target);
    let figures = vec![
        format!(
            "a {} MiB `cp` to the machine, client link at 240 Mbit/s; the relay killed with SIGKILL {kills} times \
             (each once the partial file had grown by {} MiB more) and restarted at once on the same data \
             directory",
            size / MIB,
            step / MIB
        ),
        format!(
            "cp runs: {} (each rerun resumes from the partial file); the copy finished {:.1} s after the start and is {}; partial files left: {}",
            runs.len(),
            total.as_secs_f64(),
            if intact {
                "byte-identical to the source"
            } else {
                "DIFFERENT from the source"
            },
            if leftovers == 0 { "none" } else { "some" }
        ),
        format!(
            "time from each kill until the running cp gave up: {} s",
            detections
                .iter()
                .map(|d| format!("{d:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        format!("runs: {}", summarise_runs(&runs)),
    ];
    if !intact || leftovers != 0 {
        bail!("the copy is not intact\n- {}", figures.join("\n- "));
    }
    Ok(figures)
}

/// Runs as `[status, resumed MiB]`, consecutive runs that ended the same way counted once (`Nx`).
fn summarise_runs(runs: &[(String, u64, f64)]) -> String {
    let mut groups: Vec<(usize, String)> = Vec::new();
    for (status, resumed, _) in runs {
        let text = if status == "ok" {
            format!("ok, resumed {} MiB", resumed / MIB)
        } else {
            status.clone()
        };
        match groups.last_mut() {
            Some((n, last)) if *last == text => *n += 1,
            _ => groups.push((1, text)),
        }
    }
    groups
        .iter()
        .map(|(n, text)| {
            if *n == 1 {
                format!("[{text}]")
            } else {
                format!("{n}x [{text}]")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a numbered stream from `exec` looked like across an event at `event_at` (an address move or a
/// rebind): whether it completed, and its faults.
fn exec_across(
    lab: &mut Lab,
    what: &str,
    event: impl FnOnce(&mut Lab) -> Result<()>,
) -> Result<String> {
    let count = 200;
    let mut exec = lab.contour.cli();
    exec.args([
        "connect",
        "exec",
        &lab.contour.machine,
        "--timeout",
        "120s",
        "--",
        "sh",
        "-c",
        &format!("i=0; while [ $i -lt {count} ]; do i=$((i+1)); echo n$i; sleep 0.05; done"),
    ]);
    let mut child = exec
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stdout = super::read_all(child.stdout.take());
    let stderr = super::read_all(child.stderr.take());
    thread::sleep(Duration::from_secs(4));
    let flows_before = lab.forwarder_stats()["flows"].as_u64().unwrap_or(0);
    let event_at = Instant::now();
    event(lab)?;
    let status = wait_child(&mut child, Duration::from_secs(180))?;
    let after_event = event_at.elapsed();
    let stats = lab.forwarder_stats();
    let out = stdout.join().unwrap_or_default();
    // The pinning notice of a first contact is expected; anything else on stderr is reported.
    let err: String = stderr
        .join()
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with("cmdop: first contact"))
        .collect::<Vec<_>>()
        .join("\n");
    let (missing, repeated, reordered) = sequence_faults(&numbered_lines(&out, "n"), count);
    let line = format!(
        "{what} 4 s into `cmdop connect exec` printing {count} numbered lines (one per 50 ms): exit {}, {:.1} s \
         after the change; {missing} missing, {repeated} repeated, {reordered} out of order; forwarder flows \
         {flows_before} → {}, rebinds {}{}",
        status
            .code()
            .map_or_else(|| status.to_string(), |c| c.to_string()),
        after_event.as_secs_f64(),
        stats["flows"],
        stats["rebinds"],
        if err.trim().is_empty() {
            String::new()
        } else {
            format!("; stderr: {:?}", err.trim())
        }
    );
    if !status.success() || missing + repeated + reordered > 0 {
        bail!("{line}");
    }
    Ok(line)
}

/// The client's address changes under a running exec and a running shell; then a NAT rebinding.
fn roaming(lab: &mut Lab) -> Result<Vec<String>> {
    let mut figures = vec![
        "the client moves from 10.77.1.2 to another address of its subnet (the old one deleted); the forwarder \
         in front of the relay then sees a new source and gives it a new upstream port, so the relay sees the \
         connection arrive from a new address (QUIC migration, catalog L4)"
            .to_owned(),
    ];
    let mut failures = Vec::new();
    match exec_across(lab, "client address moved to 10.77.1.3", |lab| {
        lab.net.move_client("10.77.1.3")
    }) {
        Ok(line) => figures.push(line),
        Err(e) => failures.push(format!("exec across an address move: {e:#}")),
    }
    match exec_across(
        lab,
        "NAT rebinding (same client address, new upstream port at the forwarder)",
        |lab| {
            let mut control = lab.control();
            control.rebind += 1;
            lab.impair(control)
        },
    ) {
        Ok(line) => figures.push(line),
        Err(e) => failures.push(format!("exec across a NAT rebinding: {e:#}")),
    }
    match shell_across_move(lab) {
        Ok(line) => figures.push(line),
        Err(e) => failures.push(format!("shell across an address move: {e:#}")),
    }
    lab.net.move_client(Host::Client.address())?;
    if !failures.is_empty() {
        bail!(
            "{}\n\nfigures so far:\n- {}",
            failures.join("\n"),
            figures.join("\n- ")
        );
    }
    Ok(figures)
}

/// A shell printing a numbered line every 50 ms while the client moves to 10.77.1.4.
fn shell_across_move(lab: &mut Lab) -> Result<String> {
    let count = 200;
    let mut command = lab.contour.cli();
    command.args(["connect", &lab.contour.machine, "--escape-char", "none"]);
    let mut terminal = Terminal::start(&command)?;
    terminal.type_text("stty -echo; echo READY''MARK\r")?;
    let at = terminal.wait_for("READYMARK", 0, Duration::from_secs(60))?;
    terminal.type_text(&format!(
        "i=0; while [ $i -lt {count} ]; do i=$((i+1)); echo s$i; sleep 0.05; done; echo LOOP''DONE\r"
    ))?;
    thread::sleep(Duration::from_secs(4));
    let moved = Instant::now();
    lab.net.move_client("10.77.1.4")?;
    terminal.wait_for("LOOPDONE", at, Duration::from_secs(180))?;
    let after = moved.elapsed();
    let shown = terminal.shown();
    let (missing, repeated, reordered) = sequence_faults(&numbered_lines(&shown, "s"), count);
    let reconnects = shown.matches("reconnecting").count();
    terminal.type_text("exit\r")?;
    let _ = terminal.wait_exit(Duration::from_secs(30));
    let line = format!(
        "client address moved to 10.77.1.4 4 s into a shell loop printing {count} numbered lines: finished \
         {:.1} s after the move; {missing} missing, {repeated} repeated, {reordered} out of order; \
         {reconnects} `connection lost … reconnecting` messages",
        after.as_secs_f64()
    );
    if missing + repeated + reordered > 0 {
        bail!("{line}");
    }
    Ok(line)
}
