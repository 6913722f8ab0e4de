//! `cargo xtask bench tunnel` and `cargo xtask bench cp`: bulk data through cmdop against ssh on this machine,
//! in the same run, interleaved.
//!
//! - `tunnel`: a built-in sender writes N MiB into a forwarded port and a built-in sink on 127.0.0.1 counts
//!   them and answers with the count; through `cmdop connect forward` (client, relay, agent: two QUIC hops and
//!   the end-to-end channel) and through `ssh -N -L` to the bench's own sshd.
//! - `cp`: one file of N MiB with `cmdop connect cp FILE MACHINE:DIR/` and `scp FILE 127.0.0.1:DIR/`.
//! - `rsync`: `rsync -a` of a tree of N MiB in files of mixed sizes, with `-e 'cmdop rsh'` and with
//!   `-e ssh` to the bench's sshd.
//!
//! Both report wall-time throughput and CPU seconds per GiB of every process involved on each side (client,
//! relay and agent; ssh or scp and sshd), from `/proc`.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{free_port, machine, publish, setup, utc_now, versions};
use crate::contour;

pub(super) const USAGE: &str = "usage: cargo xtask bench tunnel|cp|rsync [--mib N] [--runs N] [--no-build]

  --mib N     bytes moved per run, in MiB (default 1024)
  --runs N    timed rounds, one cmdop and one ssh transfer each (default 3), after one small warm-up round
  --no-build  use the release binaries already in target/release instead of building them";

const TUNNEL_SECTION: &str = "## tunnel: cmdop connect forward vs ssh -L";
const CP_SECTION: &str = "## cp: cmdop connect cp vs scp";
const RSYNC_SECTION: &str = "## rsync: rsync -e 'cmdop rsh' vs rsync over ssh";
const MIB: u64 = 1024 * 1024;

struct Options {
    mib: u64,
    runs: usize,
    build: bool,
}

fn parse(args: &[String], name: &str) -> Result<Options> {
    let mut options = Options {
        mib: 1024,
        runs: 3,
        build: true,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut number = |flag: &str| -> Result<u64> {
            let n = args
                .next()
                .with_context(|| format!("{flag} takes a number"))?;
            match n.parse::<u64>() {
                Ok(n) if n >= 1 => Ok(n),
                _ => bail!("{flag} takes a positive whole number, got `{n}`"),
            }
        };
        match arg.as_str() {
            "--no-build" => options.build = false,
            "--mib" => options.mib = number("--mib")?,
            "--runs" => options.runs = usize::try_from(number("--runs")?)?,
            other => bail!("bench {name} does not take `{other}`\n\n{USAGE}"),
        }
    }
    Ok(options)
}

/// One side's measurements over the timed rounds.
#[derive(Debug, Default)]
struct Side {
    seconds: Vec<f64>,
    cpu_seconds: Vec<f64>,
}

impl Side {
    fn record(&mut self, wall: Duration, cpu: f64) {
        self.seconds.push(wall.as_secs_f64());
        self.cpu_seconds.push(cpu);
    }

    fn median_seconds(&self) -> f64 {
        median(&self.seconds)
    }

    fn median_mib_per_s(&self, mib: u64) -> f64 {
        mib as f64 / self.median_seconds().max(1e-9)
    }

    fn cpu_per_gib(&self, mib: u64) -> f64 {
        median(&self.cpu_seconds) / (mib as f64 / 1024.0)
    }

    fn all_mib_per_s(&self, mib: u64) -> String {
        self.seconds
            .iter()
            .map(|s| format!("{:.0}", mib as f64 / s.max(1e-9)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// CPU time (user + system, own and reaped children) of `pid` and its live descendants, in seconds.
fn tree_cpu(pids: &[u32]) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    let mut stats = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.filter_map(Result::ok) {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Ok(text) = fs::read_to_string(format!("/proc/{pid}/stat")) {
                // Fields after the `(comm)`, which may contain spaces.
                if let Some((_, rest)) = text.rsplit_once(") ") {
                    let fields: Vec<&str> = rest.split_whitespace().collect();
                    let ppid = fields
                        .get(1)
                        .and_then(|f| f.parse::<u32>().ok())
                        .unwrap_or(0);
                    let cpu: f64 = [11, 12, 13, 14]
                        .iter()
                        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<f64>().ok()))
                        .sum();
                    stats.push((pid, ppid, cpu / ticks));
                }
            }
        }
    }
    let mut members: Vec<u32> = pids.to_vec();
    let mut grew = true;
    while grew {
        grew = false;
        for (pid, ppid, _) in &stats {
            if members.contains(ppid) && !members.contains(pid) {
                members.push(*pid);
                grew = true;
            }
        }
    }
    stats
        .iter()
        .filter(|(pid, _, _)| members.contains(pid))
        .map(|(_, _, cpu)| cpu)
        .sum()
}

/// A sink on 127.0.0.1 that reads each connection to its end and answers with the byte count.
fn sink() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot start the sink")?;
    let port = listener.local_addr()?.port();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                let mut buffer = vec![0u8; 256 * 1024];
                let mut total = 0u64;
                while let Ok(n) = stream.read(&mut buffer) {
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                let _ = stream.write_all(&total.to_be_bytes());
            });
        }
    });
    Ok(port)
}

/// Sends `mib` MiB to `port`, half-closes, and waits for the sink's count.
fn send(port: u16, mib: u64) -> Result<Duration> {
    let block: Vec<u8> = (0..MIB)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let started = Instant::now();
    let mut stream =
        TcpStream::connect(("127.0.0.1", port)).context("cannot connect to the forward")?;
    stream.set_nodelay(true)?;
    for _ in 0..mib {
        stream
            .write_all(&block)
            .context("the forward broke while sending")?;
    }
    stream.shutdown(Shutdown::Write)?;
    let mut count = [0u8; 8];
    stream
        .read_exact(&mut count)
        .context("the forward ended before the sink's count came back")?;
    let elapsed = started.elapsed();
    let got = u64::from_be_bytes(count);
    if got != mib * MIB {
        bail!("the sink counted {got} bytes, {} were sent", mib * MIB);
    }
    Ok(elapsed)
}

fn wait_listening(port: u16, child: &mut Child, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited with {status} before listening");
        }
        if Instant::now() > deadline {
            bail!("{what} did not listen on 127.0.0.1:{port} within 20 s");
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `cargo xtask bench tunnel`.
pub(super) fn tunnel(root: &Path, args: &[String]) -> Result<()> {
    let options = parse(args, "tunnel")?;
    let (_scratch, sshd, contour) = setup(root, options.build)?;
    let sink = sink()?;

    contour::header("the forwards");
    let mut forward = contour.cli();
    forward
        .args(["connect", "forward", &contour.machine])
        .arg(format!("0:127.0.0.1:{sink}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    println!("{}", contour::shell_line(&forward));
    let mut forward = Killed(
        forward
            .spawn()
            .context("cannot start cmdop connect forward")?,
    );
    let mut line = String::new();
    BufReader::new(forward.0.stdout.take().context("no stdout")?)
        .read_line(&mut line)
        .context("cannot read the forward's port")?;
    let cmdop_port: u16 = line
        .strip_prefix("forwarding 127.0.0.1:")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("unexpected first line from the forward: {line:?}"))?;
    let ssh_port = free_port()?;
    let mut ssh = sshd.base("ssh");
    ssh.args(["-N", "-o", "ExitOnForwardFailure=yes", "-L"])
        .arg(format!("{ssh_port}:127.0.0.1:{sink}"))
        .args(["-p", &sshd.port.to_string(), "127.0.0.1"]);
    println!("{}", contour::shell_line(&ssh));
    let mut ssh = Killed(ssh.spawn().context("cannot start ssh -L")?);
    wait_listening(ssh_port, &mut ssh.0, "ssh -L")?;

    let cmdop_pids: Vec<u32> = contour
        .daemon_pids()
        .into_iter()
        .chain([forward.0.id()])
        .collect();
    let ssh_pids = vec![ssh.0.id(), sshd.child.id()];

    contour::header(&format!(
        "one 16 MiB warm-up each, then {} rounds of {} MiB (cmdop, then ssh)",
        options.runs, options.mib
    ));
    send(cmdop_port, 16)?;
    send(ssh_port, 16)?;
    let (mut cmdop, mut openssh) = (Side::default(), Side::default());
    for round in 1..=options.runs {
        for (side, port, pids) in [
            (&mut cmdop, cmdop_port, &cmdop_pids),
            (&mut openssh, ssh_port, &ssh_pids),
        ] {
            let before = tree_cpu(pids);
            let wall = send(port, options.mib)?;
            let cpu = tree_cpu(pids) - before;
            side.record(wall, cpu);
        }
        println!(
            "  round {round}: cmdop {:.0} MiB/s, ssh {:.0} MiB/s",
            options.mib as f64 / cmdop.seconds[round - 1],
            options.mib as f64 / openssh.seconds[round - 1]
        );
    }
    drop(forward);
    drop(ssh);

    let rows = [
        (
            "`cmdop connect forward` (client → relay → agent, end-to-end encrypted)".to_owned(),
            &cmdop,
            "client + relay + agent",
        ),
        (
            "`ssh -N -L` to the local sshd".to_owned(),
            &openssh,
            "ssh + sshd",
        ),
    ];
    let method = format!(
        "Method: a built-in sender writes {mib} MiB into the forwarded port and half-closes; a built-in sink on \
         127.0.0.1 reads to the end and answers with the count; the time is from connect to that answer. One \
         long-lived forward per side, one connection per transfer; rounds alternate cmdop and ssh. CPU is \
         user + system time of every process on the side (from /proc, including reaped children), per GiB \
         moved. Release build; ssh with its default cipher.",
        mib = options.mib
    );
    write_report(root, TUNNEL_SECTION, "tunnel", &options, &method, &rows)
}

/// Runs `cargo xtask bench cp`.
pub(super) fn cp(root: &Path, args: &[String]) -> Result<()> {
    let options = parse(args, "cp")?;
    let (scratch, sshd, contour) = setup(root, options.build)?;

    contour::header(&format!(
        "a {} MiB file of incompressible bytes",
        options.mib
    ));
    let source = scratch.path().join("payload.bin");
    {
        let mut file = fs::File::create(&source).context("cannot create the payload")?;
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut block = vec![0u8; MIB as usize];
        for _ in 0..options.mib {
            for chunk in block.chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
            }
            file.write_all(&block)?;
        }
        file.sync_all()?;
    }
    let cmdop_dir = scratch.path().join("cmdop-dst");
    let scp_dir = scratch.path().join("scp-dst");
    fs::create_dir_all(&cmdop_dir)?;
    fs::create_dir_all(&scp_dir)?;

    let mut cmdop_cp = contour.cli();
    cmdop_cp.args(["connect", "cp"]).arg(&source).arg(format!(
        "{}:{}/",
        contour.machine,
        cmdop_dir.display()
    ));
    let mut scp = sshd.base("scp");
    scp.args(["-P", &sshd.port.to_string()])
        .arg(&source)
        .arg(format!("127.0.0.1:{}/", scp_dir.display()));
    contour::header("what is measured");
    println!("{}", contour::shell_line(&cmdop_cp));
    println!("{}", contour::shell_line(&scp));
    let daemons = contour.daemon_pids();
    let sshd_pids = vec![sshd.child.id()];

    contour::header(&format!("{} rounds (cmdop, then scp)", options.runs));
    let (mut cmdop, mut openssh) = (Side::default(), Side::default());
    // Start the running total of reaped children's CPU here: the build and key generation are not measured.
    let _ = children_cpu();
    for round in 1..=options.runs {
        for (side, command, dir, pids) in [
            (&mut cmdop, &mut cmdop_cp, &cmdop_dir, &daemons),
            (&mut openssh, &mut scp, &scp_dir, &sshd_pids),
        ] {
            let _ = fs::remove_file(dir.join("payload.bin"));
            let before = tree_cpu(pids);
            let (wall, own_cpu) = timed_with_cpu(command)?;
            let cpu = tree_cpu(pids) - before + own_cpu;
            let copied = fs::metadata(dir.join("payload.bin"))
                .context("the copy left no file")?
                .len();
            if copied != options.mib * MIB {
                bail!(
                    "the copy has {copied} bytes, expected {}",
                    options.mib * MIB
                );
            }
            side.record(wall, cpu);
        }
        println!(
            "  round {round}: cmdop {:.0} MiB/s, scp {:.0} MiB/s",
            options.mib as f64 / cmdop.seconds[round - 1],
            options.mib as f64 / openssh.seconds[round - 1]
        );
    }
    drop(contour);
    drop(sshd);
    let rows = [
        (
            "`cmdop connect cp FILE MACHINE:DIR/` (SHA-256 verified, fsync, rename)".to_owned(),
            &cmdop,
            "cp + relay + agent",
        ),
        (
            "`scp FILE 127.0.0.1:DIR/`".to_owned(),
            &openssh,
            "scp + ssh + sshd",
        ),
    ];
    let method = format!(
        "Method: one {mib} MiB file of incompressible bytes copied to a fresh name on this machine, the \
         whole process timed (connect, login, transfer, verification, fsync). Rounds alternate cmdop and scp. \
         CPU is user + system time of the copying process and its children plus the relay and agent (or \
         sshd and its session children), per GiB. Release build; scp with its default cipher and protocol.",
        mib = options.mib
    );
    write_report(root, CP_SECTION, "cp", &options, &method, &rows)
}

/// Writes a tree of about `mib` MiB of incompressible bytes under `root`, in files of mixed sizes as a real tree
/// has them: half the bytes in a few large files, a quarter in 4 MiB files, an eighth each in 128 KiB and
/// 8 KiB files, spread over 64 directories. Returns the number of files.
fn write_mixed_tree(root: &Path, mib: u64) -> Result<u64> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let total = mib * MIB;
    let classes = [
        (total / 2, 128 * MIB),
        (total / 4, 4 * MIB),
        (total / 8, 128 * 1024),
        (total / 8, 8 * 1024),
    ];
    let mut files = 0u64;
    let mut buffer = Vec::new();
    for (class, (bytes, size)) in classes.into_iter().enumerate() {
        let size = size.min(bytes.max(1));
        for index in 0..bytes.div_ceil(size) {
            let dir = root.join(format!("d{:02}", files % 64));
            fs::create_dir_all(&dir)?;
            buffer.resize(usize::try_from(size)?, 0);
            for chunk in buffer.chunks_mut(8) {
                let word = next().to_le_bytes();
                chunk.copy_from_slice(&word[..chunk.len()]);
            }
            fs::write(dir.join(format!("c{class}-{index:05}.bin")), &buffer)?;
            files += 1;
        }
    }
    Ok(files)
}

/// Runs `cargo xtask bench rsync`.
pub(super) fn rsync(root: &Path, args: &[String]) -> Result<()> {
    let options = parse(args, "rsync")?;
    if !Path::new("/usr/bin/rsync").exists() {
        bail!("rsync is not installed; `apt-get install rsync` (cargo xtask ci installs it)");
    }
    let (scratch, sshd, contour) = setup(root, options.build)?;
    contour::header(&format!(
        "a tree of {} MiB of incompressible bytes in files of mixed sizes",
        options.mib
    ));
    let source = scratch.path().join("tree");
    let files = write_mixed_tree(&source, options.mib)?;
    println!(
        "  {files} files in 64 directories under {}",
        source.display()
    );
    let cmdop_dst = scratch.path().join("cmdop-dst");
    let ssh_dst = scratch.path().join("ssh-dst");

    // rsync splits -e at spaces: every word here is a path or a flag without one.
    let words = |command: &Command| -> Result<String> {
        let mut words = vec![command.get_program().to_string_lossy().into_owned()];
        words.extend(command.get_args().map(|a| a.to_string_lossy().into_owned()));
        if let Some(word) = words.iter().find(|w| w.contains(' ')) {
            bail!("{word:?} has a space, which rsync -e would split");
        }
        Ok(words.join(" "))
    };
    let mut cmdop_rsh = contour.cli();
    cmdop_rsh.arg("rsh");
    let mut ssh_rsh = sshd.base("ssh");
    ssh_rsh.args(["-p", &sshd.port.to_string()]);
    let mut cmdop_rsync = Command::new("rsync");
    cmdop_rsync
        .args(["-a", "-e", &words(&cmdop_rsh)?])
        .arg(format!("{}/", source.display()))
        .arg(format!("{}:{}/", contour.machine, cmdop_dst.display()));
    let mut ssh_rsync = Command::new("rsync");
    ssh_rsync
        .args(["-a", "-e", &words(&ssh_rsh)?])
        .arg(format!("{}/", source.display()))
        .arg(format!("127.0.0.1:{}/", ssh_dst.display()));
    contour::header("what is measured");
    println!("{}", contour::shell_line(&cmdop_rsync));
    println!("{}", contour::shell_line(&ssh_rsync));
    let daemons = contour.daemon_pids();
    let sshd_pids = vec![sshd.child.id()];

    contour::header(&format!(
        "{} rounds (cmdop, then ssh), each a full copy into an empty directory, then a re-run with nothing to do",
        options.runs
    ));
    let (mut cmdop, mut openssh) = (Side::default(), Side::default());
    let (mut cmdop_again, mut ssh_again) = (Vec::new(), Vec::new());
    let _ = children_cpu();
    for round in 1..=options.runs {
        for (side, again, command, dir, pids) in [
            (
                &mut cmdop,
                &mut cmdop_again,
                &mut cmdop_rsync,
                &cmdop_dst,
                &daemons,
            ),
            (
                &mut openssh,
                &mut ssh_again,
                &mut ssh_rsync,
                &ssh_dst,
                &sshd_pids,
            ),
        ] {
            let _ = fs::remove_dir_all(dir);
            let before = tree_cpu(pids);
            let (wall, own_cpu) = timed_with_cpu(command)?;
            let cpu = tree_cpu(pids) - before + own_cpu;
            side.record(wall, cpu);
            let (unchanged, _) = timed_with_cpu(command)?;
            again.push(unchanged.as_secs_f64());
            let copied = dir_bytes(dir)?;
            if copied != dir_bytes(&source)? {
                bail!(
                    "the copy in {} has {copied} bytes, not the tree's",
                    dir.display()
                );
            }
            // Disk is shared: keep one copy at a time.
            fs::remove_dir_all(dir)?;
        }
        println!(
            "  round {round}: cmdop {:.0} MiB/s, ssh {:.0} MiB/s; re-run with nothing to do: cmdop {:.2} s, ssh {:.2} s",
            options.mib as f64 / cmdop.seconds[round - 1],
            options.mib as f64 / openssh.seconds[round - 1],
            cmdop_again[round - 1],
            ssh_again[round - 1],
        );
    }
    drop(contour);
    drop(sshd);
    let rows = [
        (
            "`rsync -a -e 'cmdop rsh' TREE/ MACHINE:DIR/`".to_owned(),
            &cmdop,
            "rsync + cmdop + relay + agent (+ remote rsync)",
        ),
        (
            "`rsync -a -e ssh TREE/ 127.0.0.1:DIR/`".to_owned(),
            &openssh,
            "rsync + ssh + sshd (+ remote rsync)",
        ),
    ];
    let method = format!(
        "Method: `rsync -a` of a {mib} MiB tree of incompressible bytes ({files} files in 64 directories: half \
         the bytes in 128 MiB files, a quarter in 4 MiB files, an eighth each in 128 KiB and 8 KiB files) into an \
         empty directory on this machine, the whole rsync timed; then the same command again with nothing to do \
         (median re-run: cmdop {:.2} s, ssh {:.2} s). Rounds alternate cmdop and ssh. CPU is user + system time \
         of rsync and its children plus the relay and agent (or sshd and its session children), per GiB. \
         Release build; ssh with its default cipher.",
        median(&cmdop_again),
        median(&ssh_again),
        mib = options.mib
    );
    write_report(root, RSYNC_SECTION, "rsync", &options, &method, &rows)
}

/// The bytes of the regular files under `dir`.
fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// Runs a command to completion (output discarded) and returns its wall time and CPU seconds (its own and
/// its waited-for children's).
fn timed_with_cpu(command: &mut Command) -> Result<(Duration, f64)> {
    command.stdout(Stdio::null()).stderr(Stdio::piped());
    let started = Instant::now();
    let child = command
        .spawn()
        .with_context(|| format!("cannot run {}", contour::shell_line(command)))?;
    let output = child.wait_with_output()?;
    let wall = started.elapsed();
    if !output.status.success() {
        bail!(
            "`{}` exited with {}: {}",
            contour::shell_line(command),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok((wall, children_cpu()))
}

/// CPU seconds of this process's reaped children so far, as a running total; differences give one child's.
fn children_cpu() -> f64 {
    static LAST: std::sync::Mutex<f64> = std::sync::Mutex::new(0.0);
    let text = fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let total = text
        .rsplit_once(") ")
        .map(|(_, rest)| {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            [13, 14]
                .iter()
                .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<f64>().ok()))
                .sum::<f64>()
                / 100.0
        })
        .unwrap_or(0.0);
    let mut last = LAST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let delta = total - *last;
    *last = total;
    delta
}

fn write_report(
    root: &Path,
    heading: &str,
    name: &str,
    options: &Options,
    method: &str,
    rows: &[(String, &Side, &str)],
) -> Result<()> {
    let mut out = format!("{heading}\n\n{method}\n\n");
    let _ = write!(
        out,
        "- date: {}\n- command: `cargo xtask bench {name} --mib {} --runs {}{}`\n- machine: {}\n- versions: {}\n\n\
         | path | median MiB/s | all runs (MiB/s) | CPU s per GiB (median) | CPU of |\n|---|---:|---|---:|---|\n",
        utc_now(),
        options.mib,
        options.runs,
        if options.build { "" } else { " --no-build" },
        machine()?,
        versions(options.build)?,
    );
    for (label, side, cpu_of) in rows {
        let _ = writeln!(
            out,
            "| {label} | {:.0} | {} | {:.2} | {cpu_of} |",
            side.median_mib_per_s(options.mib),
            side.all_mib_per_s(options.mib),
            side.cpu_per_gib(options.mib),
        );
    }
    if let [(_, cmdop, _), (_, ssh, _), ..] = rows {
        let ratio =
            cmdop.median_mib_per_s(options.mib) / ssh.median_mib_per_s(options.mib).max(1e-9);
        let verdict = if ratio >= 1.5 {
            "≥ 1.5×: met"
        } else if ratio >= 1.0 {
            "≥ 1.0× met, 1.5× not yet"
        } else {
            "≥ 1.0×: not met"
        };
        let _ = writeln!(
            out,
            "\nThroughput ratio of medians, cmdop / ssh: **{ratio:.2}×** (goal {verdict})."
        );
    }
    publish(root, heading, &out)
}
