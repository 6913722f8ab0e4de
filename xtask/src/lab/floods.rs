//! The lab's load scenarios: streams nobody reads, a slow reader, a flood of handshakes that never finish or
//! never log in, each watched through the relay's and the agent's memory and a user's `exec` meanwhile; and a
//! full session during which the relay's sockets are watched for any connection it opens itself (catalog N2).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::net::Host;
use super::probe::{self, RssSampler, SocketWatch};
use super::scenarios::{ForwardedDownload, cp, fresh_dir, make_file, remote, same_bytes};
use super::{Lab, Running, start_until, timed};

const MIB: u64 = 1 << 20;

/// The resident-memory bound the relay and the agent must each stay under in every flood, KiB. Far above
/// what they use (tens of MiB); what it catches is growth with the load (buffering what nobody reads).
const RSS_BOUND_KIB: u64 = 256 * 1024;

/// The longest a user's `exec` may take while a flood runs (whole process: connect, log in, handshake, run).
const EXEC_BOUND: Duration = Duration::from_secs(5);

/// The relay's and the agent's resident sets now, KiB.
fn rss_now(lab: &Lab) -> (u64, u64) {
    let of = |pid: Option<u32>| pid.and_then(probe::rss_kib).map_or(0, |(rss, _)| rss);
    (of(lab.contour.relay_pid()), of(lab.contour.agent_pid()))
}

fn sampler(lab: &Lab, extra: &[(&str, u32)]) -> RssSampler {
    let mut processes = Vec::new();
    if let Some(pid) = lab.contour.relay_pid() {
        processes.push(("relay".to_owned(), pid));
    }
    if let Some(pid) = lab.contour.agent_pid() {
        processes.push(("agent".to_owned(), pid));
    }
    processes.extend(extra.iter().map(|(name, pid)| ((*name).to_owned(), *pid)));
    RssSampler::start(processes)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn peaks_line(before: (u64, u64), peaks: &BTreeMap<String, u64>) -> String {
    let peak = |name: &str| peaks.get(name).copied().map_or_else(|| "?".to_owned(), mib);
    let mut line = format!(
        "resident memory: relay {} before, peak {}; agent {} before, peak {}",
        mib(before.0),
        peak("relay"),
        mib(before.1),
        peak("agent")
    );
    for (name, kib) in peaks
        .iter()
        .filter(|(n, _)| !matches!(n.as_str(), "relay" | "agent"))
    {
        line.push_str(&format!("; {name} peak {}", mib(*kib)));
    }
    line
}

/// One timed `cmdop connect exec MACHINE -- true`.
#[derive(Debug)]
struct Probe {
    ok: bool,
    elapsed: Duration,
    text: String,
}

/// Times `cmdop connect exec MACHINE -- true` `n` times: a command of another person than the one whose
/// load it runs beside (its own client key, so it does not use up that person's share of the machine).
fn exec_probe(lab: &Lab, n: usize) -> Vec<Probe> {
    (0..n)
        .map(|_| {
            let mut exec = lab.contour.other_person_cli();
            exec.args(["connect", "exec", &lab.contour.machine, "--", "true"]);
            match timed(&mut exec, Duration::from_secs(60)) {
                Ok(done) if done.status.success() => Probe {
                    ok: true,
                    elapsed: done.elapsed,
                    text: format!("{:.2} s", done.elapsed.as_secs_f64()),
                },
                Ok(done) => Probe {
                    ok: false,
                    elapsed: done.elapsed,
                    text: format!(
                        "failed after {:.1} s ({}: {})",
                        done.elapsed.as_secs_f64(),
                        done.status,
                        done.stderr.trim().lines().last().unwrap_or("")
                    ),
                },
                Err(e) => Probe {
                    ok: false,
                    elapsed: Duration::from_secs(60),
                    text: format!("no answer within 60 s ({e:#})"),
                },
            }
        })
        .collect()
}

fn probes_text(probes: &[Probe]) -> String {
    probes
        .iter()
        .map(|p| p.text.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The checks a flood scenario failed, if any: a user's command that failed or was slow, memory over the
/// bound.
fn flood_faults(probes: &[Probe], peaks: &BTreeMap<String, u64>) -> Vec<String> {
    let mut faults: Vec<String> = probes
        .iter()
        .filter(|p| !p.ok || p.elapsed > EXEC_BOUND)
        .map(|p| format!("a user's exec during the load: {}", p.text))
        .collect();
    for name in ["relay", "agent"] {
        if let Some(kib) = peaks.get(name).filter(|kib| **kib > RSS_BOUND_KIB) {
            faults.push(format!(
                "{name} resident memory {} over the bound of {}",
                mib(*kib),
                mib(RSS_BOUND_KIB)
            ));
        }
    }
    faults
}

/// The agent's TCP connections to the byte source (port 9000) now.
fn agent_connections(lab: &Lab) -> usize {
    lab.contour
        .agent_pid()
        .map_or(0, |pid| probe::tcp_connections_to(pid, 9000))
}

/// Polls the agent's connections to the byte source until none is left, for up to `timeout`; returns how
/// many are left.
fn wait_released(lab: &Lab, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let left = agent_connections(lab);
        if left == 0 || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A forward on the client to a byte source on the agent's loopback (endless when `bytes` is 0).
fn forward_to_blast(lab: &Lab, local_port: u16, bytes: u64) -> Result<(Running, Running)> {
    let server = Running(start_until(
        &mut lab.helper(
            Host::Agent,
            "blast",
            &[
                "--listen",
                "127.0.0.1:9000",
                "--seed",
                "21",
                "--bytes",
                &bytes.to_string(),
                "--seconds",
                "1800",
            ],
        ),
        "listening",
        |line| line.contains("listening"),
    )?);
    let forward = lab.forward(&format!("127.0.0.1:{local_port}:127.0.0.1:9000"))?;
    Ok((server, forward))
}

/// `bail!` with the faults first and the figures after, or the figures.
fn verdict(faults: Vec<String>, figures: Vec<String>) -> Result<Vec<String>> {
    if faults.is_empty() {
        Ok(figures)
    } else {
        bail!(
            "{}\n\nfigures:\n- {}",
            faults.join("\n"),
            figures.join("\n- ")
        )
    }
}

/// 1,000 forwarded connections to an endless source, opened and never read, held 30 s.
pub(crate) fn streams(lab: &mut Lab) -> Result<Vec<String>> {
    let (count, hold) = if lab.options.quick {
        (200, 10)
    } else {
        (1000, 30)
    };
    let before = rss_now(lab);
    let (_server, forward) = forward_to_blast(lab, 19000, 0)?;
    let sampler = sampler(lab, &[("client (forward)", forward.0.id())]);
    let started = Instant::now();
    let mut holder = lab.helper(
        Host::Client,
        "hold",
        &[
            "--connect",
            "127.0.0.1:19000",
            "--count",
            &count.to_string(),
            "--seconds",
            &hold.to_string(),
        ],
    );
    let mut holder = holder
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot start the connection holder")?;
    let held_out = super::read_all(holder.stdout.take());
    // A user's command while the streams sit unread.
    std::thread::sleep(Duration::from_secs(hold / 2));
    let reached = agent_connections(lab);
    let probes = exec_probe(lab, 3);
    let status = super::wait_child(&mut holder, Duration::from_secs(hold + 120))?;
    // The holder's connections are closed now: the forward must pass that on and the agent let go.
    let left_after_close = wait_released(lab, Duration::from_secs(15));
    drop(forward);
    let left_after_forward = wait_released(lab, Duration::from_secs(15));
    let peaks = sampler.finish();
    let held: Vec<Value> = held_out
        .join()
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let summary = |key: &str| {
        held.iter()
            .find_map(|v| v[key].as_u64())
            .map_or_else(|| "?".to_owned(), |n| n.to_string())
    };
    let figures = vec![
        format!(
            "{count} TCP connections into a `cmdop connect forward` whose far end (on the agent's loopback) writes \
             endlessly; none is ever read; held {hold} s (holder {status}): {} connected to the forward, {reached} \
             of them reached the far end (the agent's connections to it mid-hold), {} closed by the far side \
             during the hold, {:.0} s in all",
            summary("connected"),
            summary("closed_by_peer"),
            started.elapsed().as_secs_f64()
        ),
        peaks_line(before, &peaks),
        format!(
            "`cmdop connect exec MACHINE -- true` meanwhile: {}",
            probes_text(&probes)
        ),
        format!(
            "the agent's connections to the far end 15 s after the holder closed its connections: \
             {left_after_close}; 15 s after the forward itself was stopped: {left_after_forward}"
        ),
    ];
    let mut faults = flood_faults(&probes, &peaks);
    if left_after_forward > 0 {
        faults.push(format!(
            "{left_after_forward} agent connections to the far end outlived the forward that asked for them"
        ));
    }
    verdict(faults, figures)
}

/// A 1 GiB forward read at 1 MiB/s for 30 s, then as fast as it comes; every byte checked.
pub(crate) fn slow_reader(lab: &mut Lab) -> Result<Vec<String>> {
    let (size, slow_seconds) = if lab.options.quick {
        (128 * MIB, 10)
    } else {
        (1024 * MIB, 30)
    };
    let before = rss_now(lab);
    let (_server, forward) = forward_to_blast(lab, 19001, size)?;
    let sampler = sampler(lab, &[("client (forward)", forward.0.id())]);
    let mut drain = lab.helper(
        Host::Client,
        "drain",
        &[
            "--connect",
            "127.0.0.1:19001",
            "--seed",
            "21",
            "--bytes",
            &size.to_string(),
            "--slow-rate",
            &MIB.to_string(),
            "--slow-seconds",
            &slow_seconds.to_string(),
            "--seconds",
            "1500",
        ],
    );
    let mut drain = drain.stdout(std::process::Stdio::piped()).spawn()?;
    let out = super::read_all(drain.stdout.take());
    std::thread::sleep(Duration::from_secs(slow_seconds / 2));
    let probes = exec_probe(lab, 3);
    let status = super::wait_child(&mut drain, Duration::from_secs(1600))?;
    drop(forward);
    let left = wait_released(lab, Duration::from_secs(15));
    let peaks = sampler.finish();
    let result: Value = out
        .join()
        .unwrap_or_default()
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    let figures = vec![
        format!(
            "{} MiB through `cmdop connect forward`, read at 1 MiB/s for {slow_seconds} s ({} MiB read slowly), \
             then at full speed: first byte after {:.1} s, reader {status}, {} bytes, intact: {}, {:.1} s in all",
            size / MIB,
            result["slow_bytes"].as_u64().unwrap_or(0) / MIB,
            result["first_byte_seconds"].as_f64().unwrap_or(-1.0),
            result["bytes"].as_u64().unwrap_or(0),
            result["intact"].as_bool().unwrap_or(false),
            result["seconds"].as_f64().unwrap_or(0.0)
        ),
        peaks_line(before, &peaks),
        format!(
            "`cmdop connect exec MACHINE -- true` during the slow phase: {}",
            probes_text(&probes)
        ),
        format!("the agent's connections to the source 15 s after the forward stopped: {left}"),
    ];
    let mut faults = flood_faults(&probes, &peaks);
    if !status.success() || result["intact"] != true {
        faults.push("the slow reader did not get every byte intact".to_owned());
    }
    if left > 0 {
        faults.push(format!(
            "{left} agent connections to the source outlived the forward"
        ));
    }
    verdict(faults, figures)
}

/// 10,000 QUIC Initials from 50 source addresses that never finish their handshake (10 s at the default
/// 1,000/s), then 1,000 handshakes that finish and never log in; meanwhile a real client runs `exec`.
pub(crate) fn handshakes(lab: &mut Lab) -> Result<Vec<String>> {
    let rate = lab.options.flood_rate;
    let (initials, handshakes) = if lab.options.quick {
        (rate * 2, (rate / 5).max(1))
    } else {
        (rate * 10, rate)
    };
    let sources = lab.net.add_client_addresses(50)?;
    let mut figures = vec![format!(
        "from the client's namespace, straight to the relay (10.77.2.2:4433), from {} source addresses",
        sources.len()
    )];
    let mut faults = Vec::new();
    for (mode, count) in [("initials", initials), ("handshakes", handshakes)] {
        let before = rss_now(lab);
        let sampler = sampler(lab, &[]);
        let mut flood = lab.on(Host::Client, &lab.flood);
        flood.args([
            "--relay",
            super::RELAY_LISTEN,
            "--fingerprint",
            &lab.contour.fingerprint,
            "--mode",
            mode,
            "--count",
            &count.to_string(),
            "--rate",
            &rate.to_string(),
            "--hold-seconds",
            "15",
            "--sources",
            &sources.join(","),
        ]);
        let mut flood = flood
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let out = super::read_all(flood.stdout.take());
        let err = super::read_all(flood.stderr.take());
        // Late in the flood, when whatever it fills is full.
        std::thread::sleep(Duration::from_secs_f64(
            (0.8 * count as f64 / rate as f64).max(2.0),
        ));
        let probes = exec_probe(lab, 4);
        let status = super::wait_child(&mut flood, Duration::from_secs(300))?;
        let peaks = sampler.finish();
        let after = rss_now(lab);
        let report = out.join().unwrap_or_default();
        let errors = err.join().unwrap_or_default();
        figures.push(format!(
            "{count} {mode} at {rate}/s, held 15 s (flood tool {status}): {}{}",
            report.trim(),
            if errors.trim().is_empty() {
                String::new()
            } else {
                format!(" (stderr: {})", errors.trim())
            }
        ));
        figures.push(format!(
            "{}; relay {} after",
            peaks_line(before, &peaks),
            mib(after.0)
        ));
        figures.push(format!(
            "`cmdop connect exec MACHINE -- true` during the flood: {}",
            probes_text(&probes)
        ));
        faults.extend(
            flood_faults(&probes, &peaks)
                .into_iter()
                .map(|f| format!("{mode}: {f}")),
        );
    }
    verdict(faults, figures)
}

/// A whole session (list, exec, forward, cp both ways, a shell) while the relay's sockets are watched, and
/// nftables counts every connection the relay's namespace opens (catalog N2).
pub(crate) fn no_dial_out(lab: &mut Lab) -> Result<Vec<String>> {
    let relay = lab
        .contour
        .relay_pid()
        .context("the relay is not running")?;
    let (dialled_before, _) = lab.net.relay_dialled()?;
    let watch = SocketWatch::start(relay);
    let started = Instant::now();
    let dir = fresh_dir(lab, "no-dial-out")?;
    let source = dir.join("small.bin");
    make_file(&source, 2 * MIB, 31)?;
    let mut steps = Vec::new();
    let mut list = lab.contour.cli();
    list.args(["connect", "--list"]);
    steps.push((
        "list",
        timed(&mut list, Duration::from_secs(60))?.status.success(),
    ));
    let mut exec = lab.contour.cli();
    exec.args(["connect", "exec", &lab.contour.machine, "--", "uname", "-a"]);
    steps.push((
        "exec",
        timed(&mut exec, Duration::from_secs(60))?.status.success(),
    ));
    let up = dir.join("up");
    std::fs::create_dir_all(&up)?;
    let push = timed(
        &mut cp(
            lab,
            &[&source.to_string_lossy(), &format!("{}/", remote(lab, &up))],
        ),
        Duration::from_secs(120),
    )?;
    steps.push((
        "cp to the machine",
        push.status.success() && same_bytes(&source, &up.join("small.bin"))?,
    ));
    let down = dir.join("down");
    std::fs::create_dir_all(&down)?;
    let pull = timed(
        &mut cp(
            lab,
            &[&remote(lab, &up.join("small.bin")), &down.to_string_lossy()],
        ),
        Duration::from_secs(120),
    )?;
    steps.push((
        "cp from the machine",
        pull.status.success() && same_bytes(&source, &down.join("small.bin"))?,
    ));
    let out = dir.join("download.bin");
    let get = ForwardedDownload {
        server_port: 8001,
        local_port: 18081,
        serve_seconds: 300,
        get_seconds: 120,
        timeout: Duration::from_secs(150),
    }
    .run(lab, &source, &out)?;
    steps.push((
        "forward",
        get.status.success() && same_bytes(&source, &out)?,
    ));
    let mut shell = lab.contour.cli();
    shell.args(["connect", &lab.contour.machine, "--escape-char", "none"]);
    let mut terminal = super::terminal::Terminal::start(&shell)?;
    terminal.type_text("echo SHELL''OK; exit\r")?;
    let shell_ok = terminal
        .wait_for("SHELLOK", 0, Duration::from_secs(60))
        .is_ok();
    let _ = terminal.wait_exit(Duration::from_secs(30));
    steps.push(("shell", shell_ok));
    let mut status = lab.contour.cli();
    status.arg("status");
    steps.push((
        "status",
        timed(&mut status, Duration::from_secs(60))?
            .status
            .success(),
    ));
    let (samples, all, outgoing) = watch.finish();
    let (dialled_after, destinations) = lab.net.relay_dialled()?;
    let new_outbound = dialled_after.saturating_sub(dialled_before);
    // A positive control: a connection attempt made from the relay's namespace (by this lab, not the relay)
    // must be counted, or a zero above proves nothing.
    let _ = timed(
        &mut lab.helper(
            Host::Relay,
            "get",
            &[
                "--connect",
                "10.77.2.1:9",
                "--out",
                "/dev/null",
                "--seconds",
                "5",
            ],
        ),
        Duration::from_secs(20),
    );
    let (dialled_control, _) = lab.net.relay_dialled()?;
    let control_counted = dialled_control > dialled_after;
    let mut figures = vec![
        format!(
            "session: {} in {:.1} s",
            steps
                .iter()
                .map(|(s, ok)| format!("{s} {}", if *ok { "ok" } else { "FAILED" }))
                .collect::<Vec<_>>()
                .join(", "),
            started.elapsed().as_secs_f64()
        ),
        format!(
            "relay sockets sampled {samples} times during the session (/proc/PID/fd against /proc/PID/net/{{tcp,udp}}{{,6}}): {} distinct sockets seen ({}), {} opened towards \
             anyone",
            all.len(),
            all.iter()
                .map(|s| format!("{} {}", s.table, s.local))
                .collect::<Vec<_>>()
                .join(", "),
            outgoing.len()
        ),
        format!(
            "nftables in the relay's namespace (conntrack from the relay's first packet on): {new_outbound} new \
             outbound connections during the session (state new, not loopback){}",
            if destinations.is_empty() {
                String::new()
            } else {
                format!("; destinations ever dialled: {}", destinations.join(", "))
            }
        ),
    ];
    figures.push(format!(
        "positive control: a TCP connection attempt from the relay's namespace to 10.77.2.1:9 {}",
        if control_counted {
            "was counted"
        } else {
            "was NOT counted (the check is blind)"
        }
    ));
    if !control_counted {
        bail!(
            "the nftables check did not count a known connection attempt\n- {}",
            figures.join("\n- ")
        );
    }
    if !outgoing.is_empty() || new_outbound > 0 {
        bail!(
            "the relay dialled out: {outgoing:?}\n- {}",
            figures.join("\n- ")
        );
    }
    if steps.iter().any(|(_, ok)| !ok) {
        bail!("a step of the session failed\n- {}", figures.join("\n- "));
    }
    Ok(figures)
}
