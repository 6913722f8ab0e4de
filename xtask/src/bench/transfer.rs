//! `cargo xtask bench tunnel` and `cargo xtask bench cp`: bulk data through cmdop against ssh on this machine,
//! in the same run, interleaved.
//!
//! - `tunnel`: built-in senders write N MiB into a forwarded port and a built-in sink on 127.0.0.1 counts
//!   them and answers with the count; through `cmdop connect forward` (client, relay, agent: two QUIC hops and
//!   the end-to-end channel) and through `ssh -N -L` to the bench's own sshd. Once over one connection, then
//!   over eight at once through the same forward (with how evenly the eight were served).
//! - `cp`: one file of N MiB, then a tree of many small files, with `cmdop connect cp` and `scp`.
//! - `rsync`: `rsync -a` of a tree of N MiB in files of mixed sizes, with `-e 'cmdop rsh'` and with
//!   `-e ssh` to the bench's sshd.
//!
//! Both report wall-time throughput, CPU seconds of every process involved on each side (client, relay and
//! agent; ssh or scp and sshd) from `/proc`, the load average around the run, the relay's count of UDP
//! datagrams and their size, and with `--perf` the system calls and context switches per GiB.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::measure::{self, PerfStat, Processes};
use super::sink::{self, Sink};
use super::{Scratch, Sshd, free_port, machine, publish, setup, utc_now, versions};
use crate::contour::{self, Contour};

pub(super) const USAGE: &str = "usage: cargo xtask bench tunnel [--mib N] [--runs N] [--streams N] [--perf] [--no-build]
       cargo xtask bench cp [--mib N] [--files N] [--case file|tree] [--runs N] [--perf] [--no-build]
       cargo xtask bench rsync [--mib N] [--runs N] [--no-build]

  --mib N       bytes moved per run, in MiB (default 1024)
  --runs N      timed rounds, one cmdop and one ssh transfer each (default 3), after one small warm-up round
  --streams N   tunnel: only N concurrent connections per transfer (default: 1, then 8, each its own section)
  --files N     cp: the tree case's number of small files (default 10000)
  --case C      cp: only `file` (one file of --mib MiB) or `tree` (--files small files); default both
  --perf        tunnel: also count system calls and context switches per GiB with `perf stat` (linux-perf)
  --no-build    use the release binaries already in target/release instead of building them";

const TUNNEL_SECTION: &str = "## tunnel: cmdop connect forward vs ssh -L";
const STREAMS_SECTION: &str = "## tunnel, concurrent streams: cmdop connect forward vs ssh -L";
const CP_SECTION: &str = "## cp: cmdop connect cp vs scp";
const TREE_SECTION: &str = "## cp, a tree of small files: cmdop connect cp -r vs scp -r";
const RSYNC_SECTION: &str = "## rsync: rsync -e 'cmdop rsh' vs rsync over ssh";
const MIB: u64 = 1024 * 1024;

#[derive(Debug, Clone)]
struct Options {
    mib: u64,
    runs: usize,
    build: bool,
    streams: Option<usize>,
    files: usize,
    case: Option<String>,
    perf: bool,
}

impl Options {
    /// The command line that reproduces this run, for the report.
    fn command(&self, name: &str) -> String {
        let mut line = format!(
            "cargo xtask bench {name} --mib {} --runs {}",
            self.mib, self.runs
        );
        if let Some(streams) = self.streams {
            let _ = write!(line, " --streams {streams}");
        }
        if name == "cp" {
            let _ = write!(line, " --files {}", self.files);
            if let Some(case) = &self.case {
                let _ = write!(line, " --case {case}");
            }
        }
        if self.perf {
            line.push_str(" --perf");
        }
        if !self.build {
            line.push_str(" --no-build");
        }
        line
    }
}

fn parse(args: &[String], name: &str) -> Result<Options> {
    let mut options = Options {
        mib: 1024,
        runs: 3,
        build: true,
        streams: None,
        files: 10_000,
        case: None,
        perf: false,
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
            "--perf" if name == "tunnel" => options.perf = true,
            "--mib" => options.mib = number("--mib")?,
            "--runs" => options.runs = usize::try_from(number("--runs")?)?,
            "--streams" if name == "tunnel" => {
                options.streams = Some(usize::try_from(number("--streams")?)?);
            }
            "--files" if name == "cp" => options.files = usize::try_from(number("--files")?)?,
            "--case" if name == "cp" => {
                let case = args.next().context("--case takes `file` or `tree`")?;
                if case != "file" && case != "tree" {
                    bail!("--case takes `file` or `tree`, got `{case}`");
                }
                options.case = Some(case.clone());
            }
            other => bail!("bench {name} does not take `{other}`\n\n{USAGE}"),
        }
    }
    if options.perf {
        measure::check_perf()?;
    }
    Ok(options)
}

/// One side's measurements over the timed rounds.
#[derive(Debug)]
struct Side {
    label: String,
    processes: Processes,
    seconds: Vec<f64>,
    /// Per round, CPU seconds of each process group.
    cpu: Vec<Vec<f64>>,
    /// Per round, the smallest and largest share of concurrent connections.
    shares: Vec<(f64, f64)>,
    perf: Option<Vec<(&'static str, Vec<f64>)>>,
}

impl Side {
    fn new(label: &str, processes: Processes) -> Self {
        Self {
            label: label.to_owned(),
            processes,
            seconds: Vec::new(),
            cpu: Vec::new(),
            shares: Vec::new(),
            perf: None,
        }
    }

    fn median_seconds(&self) -> f64 {
        median(&self.seconds)
    }

    fn rate(&self, amount: f64) -> f64 {
        amount / self.median_seconds().max(1e-9)
    }

    fn all_rates(&self, amount: f64) -> String {
        self.seconds
            .iter()
            .map(|s| format!("{:.0}", amount / s.max(1e-9)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Median over rounds of each group's CPU seconds, divided by `per`.
    fn cpu_each(&self, per: f64) -> Vec<f64> {
        (0..self.processes.labels().len())
            .map(|i| {
                let column: Vec<f64> = self
                    .cpu
                    .iter()
                    .map(|r| r.get(i).copied().unwrap_or(0.0))
                    .collect();
                median(&column) / per
            })
            .collect()
    }

    fn cpu_total(&self, per: f64) -> f64 {
        let totals: Vec<f64> = self.cpu.iter().map(|r| r.iter().sum()).collect();
        median(&totals) / per
    }

    fn cpu_breakdown(&self, per: f64) -> String {
        self.processes
            .labels()
            .iter()
            .zip(self.cpu_each(per))
            .map(|(label, cpu)| format!("{label} {cpu:.2}"))
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

/// Stops `child` with SIGINT (a forward then closes its connection politely, and the relay logs its
/// traffic) and waits up to five seconds for it.
fn interrupt(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Ok(None) = child.try_wait() {
        if Instant::now() > deadline {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The two forwards of the tunnel bench, each to the sink.
struct Forwards {
    cmdop: Killed,
    cmdop_port: u16,
    ssh: Killed,
    ssh_port: u16,
}

fn start_forwards(contour: &Contour, sshd: &Sshd, sink: u16) -> Result<Forwards> {
    contour::header("the forwards");
    let mut forward = contour.cli();
    forward
        .args(["connect", "forward", &contour.machine])
        .arg(format!("0:127.0.0.1:{sink}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    println!("{}", contour::shell_line(&forward));
    let mut cmdop = Killed(
        forward
            .spawn()
            .context("cannot start cmdop connect forward")?,
    );
    let mut line = String::new();
    BufReader::new(cmdop.0.stdout.take().context("no stdout")?)
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
    Ok(Forwards {
        cmdop,
        cmdop_port,
        ssh,
        ssh_port,
    })
}

/// Runs `cargo xtask bench tunnel`.
pub(super) fn tunnel(root: &Path, args: &[String]) -> Result<()> {
    let options = parse(args, "tunnel")?;
    let (scratch, sshd, contour) = setup(root, options.build)?;
    let sink = Sink::start()?;
    let mut forwards = start_forwards(&contour, &sshd, sink.port)?;
    let pids = contour.daemon_pids();
    let cmdop = Processes::new(vec![
        ("client", vec![forwards.cmdop.0.id()]),
        ("relay", vec![pids.relay]),
        ("agent", vec![pids.agent]),
    ]);
    let ssh = Processes::new(vec![
        ("ssh", vec![forwards.ssh.0.id()]),
        ("sshd", vec![sshd.child.id()]),
    ]);
    contour::header("one 16 MiB warm-up each");
    sink::send(forwards.cmdop_port, 16, 1)?;
    sink::send(forwards.ssh_port, 16, 1)?;
    let counts = options.streams.map_or_else(|| vec![1, 8], |n| vec![n]);
    let mut sections = Vec::new();
    for streams in counts {
        let load_before = measure::load_average();
        let mut sides = [
            Side::new(
                "`cmdop connect forward` (client → relay → agent, end-to-end encrypted)",
                cmdop.clone(),
            ),
            Side::new("`ssh -N -L` to the local sshd", ssh.clone()),
        ];
        let ports = [forwards.cmdop_port, forwards.ssh_port];
        tunnel_rounds(&options, &sink, streams, &mut sides, ports, scratch.path())?;
        sections.push((streams, sides, load_before, measure::load_average()));
    }
    interrupt(&mut forwards.cmdop.0);
    let traffic = measure::last_traffic(&contour.log_path("relay"));
    drop(forwards);
    for (streams, sides, load_before, load_after) in sections {
        let report = Report {
            heading: if streams == 1 {
                TUNNEL_SECTION
            } else {
                STREAMS_SECTION
            },
            command: options.command("tunnel"),
            method: tunnel_method(&options, streams),
            unit: "MiB/s",
            amount: options.mib as f64,
            per: options.mib as f64 / 1024.0,
            per_unit: "GiB",
            loads: (load_before, load_after),
            traffic: traffic.clone(),
            build: options.build,
            streams,
        };
        publish(root, report.heading, &report.markdown(&sides)?)?;
    }
    Ok(())
}

fn tunnel_rounds(
    options: &Options,
    sink: &Sink,
    streams: usize,
    sides: &mut [Side; 2],
    ports: [u16; 2],
    scratch: &Path,
) -> Result<()> {
    contour::header(&format!(
        "{} rounds of {} MiB over {streams} connection(s) at once (cmdop, then ssh)",
        options.runs, options.mib
    ));
    let mut perf = if options.perf {
        sides
            .iter()
            .map(|side| PerfStat::start(&side.processes, scratch))
            .collect()
    } else {
        Vec::new()
    };
    for round in 1..=options.runs {
        for (side, port) in sides.iter_mut().zip(ports) {
            sink.begin();
            let before = side.processes.cpu();
            let wall = sink::send(port, options.mib, streams)?;
            let after = side.processes.cpu();
            side.seconds.push(wall.as_secs_f64());
            side.cpu
                .push(after.iter().zip(&before).map(|(a, b)| a - b).collect());
            if let Some(shares) = sink.shares() {
                side.shares.push(shares);
            }
        }
        println!(
            "  round {round}: cmdop {:.0} MiB/s, ssh {:.0} MiB/s (load {:.1})",
            options.mib as f64 / sides[0].seconds[round - 1],
            options.mib as f64 / sides[1].seconds[round - 1],
            measure::load_average()
        );
    }
    for (side, perf) in sides.iter_mut().zip(perf.drain(..)) {
        side.perf = perf.map(PerfStat::finish);
    }
    Ok(())
}

fn tunnel_method(options: &Options, streams: usize) -> String {
    let connections = if streams == 1 {
        "one connection per transfer".to_owned()
    } else {
        format!(
            "{streams} connections at once per transfer, {} MiB each; the sink notes each connection's bytes \
             when the first one ends, which gives the smallest and largest share of the bytes moved while all \
             {streams} ran (an even split is {:.1} % each)",
            options.mib / streams as u64,
            100.0 / streams as f64
        )
    };
    format!(
        "Method: built-in senders write {mib} MiB into the forwarded port and half-close; a built-in sink on \
         127.0.0.1 reads to the end and answers with the count; the time is from the first connect to the \
         last answer. One long-lived forward per side, {connections}; rounds alternate cmdop and ssh. CPU is \
         user + system time of every process on the side (from /proc, including reaped children), per GiB \
         moved. Release build; ssh with its default cipher.",
        mib = options.mib
    )
}

/// Runs `cargo xtask bench cp`: one big file, then a tree of small files (or the one `--case`).
pub(super) fn cp(root: &Path, args: &[String]) -> Result<()> {
    let options = parse(args, "cp")?;
    let (scratch, sshd, contour) = setup(root, options.build)?;
    if options.case.as_deref() != Some("tree") {
        let source = scratch.path().join("payload.bin");
        write_payload(&source, options.mib)?;
        let expect = Expect::File(options.mib * MIB);
        let report = copy_case(&options, &scratch, &sshd, &contour, &source, &expect)?;
        publish(root, CP_SECTION, &report)?;
        let _ = fs::remove_file(&source);
    }
    if options.case.as_deref() != Some("file") {
        let source = scratch.path().join("tree");
        let bytes = write_tree(&source, options.files)?;
        let expect = Expect::Tree {
            files: options.files,
            bytes,
        };
        let report = copy_case(&options, &scratch, &sshd, &contour, &source, &expect)?;
        publish(root, TREE_SECTION, &report)?;
    }
    Ok(())
}

/// What a finished copy must have produced.
#[derive(Debug)]
enum Expect {
    File(u64),
    Tree { files: usize, bytes: u64 },
}

fn write_payload(path: &Path, mib: u64) -> Result<()> {
    contour::header(&format!("a {mib} MiB file of incompressible bytes"));
    let mut file = fs::File::create(path).context("cannot create the payload")?;
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut block = vec![0u8; MIB as usize];
    for _ in 0..mib {
        fill(&mut block, &mut state);
        file.write_all(&block)?;
    }
    file.sync_all()?;
    Ok(())
}

fn fill(block: &mut [u8], state: &mut u64) {
    for chunk in block.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
}

/// `files` files of 1 to 8 KiB (4.5 KiB on average) in directories of 100; returns the total size.
fn write_tree(root: &Path, files: usize) -> Result<u64> {
    contour::header(&format!("a tree of {files} small files, 100 per directory"));
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut total = 0u64;
    let mut block = vec![0u8; 8192];
    for i in 0..files {
        let dir = root.join(format!("d{:03}", i / 100));
        if i % 100 == 0 {
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        fill(&mut block, &mut state);
        let size = 1024 + (state % 7169) as usize;
        fs::write(dir.join(format!("f{i:05}.dat")), &block[..size])?;
        total += size as u64;
    }
    Ok(total)
}

/// Checks what a copy left in `dir` against `expect`, then removes it.
fn check_and_clear(dir: &Path, expect: &Expect) -> Result<()> {
    match expect {
        Expect::File(size) => {
            let copied = fs::metadata(dir.join("payload.bin"))
                .context("the copy left no file")?
                .len();
            if copied != *size {
                bail!("the copy has {copied} bytes, expected {size}");
            }
            fs::remove_file(dir.join("payload.bin"))?;
        }
        Expect::Tree { files, bytes } => {
            let (n, size) = tree_size(&dir.join("tree"))?;
            if n != *files || size != *bytes {
                bail!("the copy has {n} files and {size} bytes, expected {files} and {bytes}");
            }
            fs::remove_dir_all(dir.join("tree"))?;
        }
    }
    Ok(())
}

fn tree_size(dir: &Path) -> Result<(usize, u64)> {
    let mut files = 0;
    let mut bytes = 0;
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        let metadata = entry.metadata()?;
        if metadata.is_dir() {
            let (n, b) = tree_size(&entry.path())?;
            files += n;
            bytes += b;
        } else {
            files += 1;
            bytes += metadata.len();
        }
    }
    Ok((files, bytes))
}

/// Times `--runs` rounds of copying `source` with cmdop and with scp; returns the report section.
fn copy_case(
    options: &Options,
    scratch: &Scratch,
    sshd: &Sshd,
    contour: &Contour,
    source: &Path,
    expect: &Expect,
) -> Result<String> {
    let tree = matches!(expect, Expect::Tree { .. });
    let cmdop_dir = scratch.path().join("cmdop-dst");
    let scp_dir = scratch.path().join("scp-dst");
    fs::create_dir_all(&cmdop_dir)?;
    fs::create_dir_all(&scp_dir)?;
    let recursive = if tree { vec!["-r"] } else { Vec::new() };
    let mut cmdop_cp = contour.cli();
    cmdop_cp
        .args(["connect", "cp"])
        .args(&recursive)
        .arg(source)
        .arg(format!("{}:{}/", contour.machine, cmdop_dir.display()));
    let mut scp = sshd.base("scp");
    scp.args(["-P", &sshd.port.to_string()])
        .args(&recursive)
        .arg(source)
        .arg(format!("127.0.0.1:{}/", scp_dir.display()));
    contour::header("what is measured");
    println!("{}", contour::shell_line(&cmdop_cp));
    println!("{}", contour::shell_line(&scp));
    let pids = contour.daemon_pids();
    let mut sides = [
        Side::new(
            if tree {
                "`cmdop connect cp -r TREE MACHINE:DIR/` (each file SHA-256 verified, fsynced, renamed)"
            } else {
                "`cmdop connect cp FILE MACHINE:DIR/` (SHA-256 verified, fsync, rename)"
            },
            Processes::new(vec![
                ("cp", Vec::new()),
                ("relay", vec![pids.relay]),
                ("agent", vec![pids.agent]),
            ]),
        ),
        Side::new(
            if tree {
                "`scp -r TREE 127.0.0.1:DIR/`"
            } else {
                "`scp FILE 127.0.0.1:DIR/`"
            },
            Processes::new(vec![
                ("scp + ssh", Vec::new()),
                ("sshd", vec![sshd.child.id()]),
            ]),
        ),
    ];
    let load_before = measure::load_average();
    copy_rounds(
        options,
        &mut sides,
        [
            (&mut cmdop_cp, cmdop_dir.as_path()),
            (&mut scp, scp_dir.as_path()),
        ],
        expect,
    )?;
    let load_after = measure::load_average();
    let (amount, per, unit, per_unit) = match expect {
        Expect::File(_) => (
            options.mib as f64,
            options.mib as f64 / 1024.0,
            "MiB/s",
            "GiB",
        ),
        Expect::Tree { files, .. } => (
            *files as f64,
            *files as f64 / 1000.0,
            "files/s",
            "1000 files",
        ),
    };
    let report = Report {
        heading: if tree { TREE_SECTION } else { CP_SECTION },
        command: options.command("cp"),
        method: copy_method(expect),
        unit,
        amount,
        per,
        per_unit,
        loads: (load_before, load_after),
        traffic: measure::last_traffic(&contour.log_path("relay")),
        build: options.build,
        streams: 1,
    };
    report.markdown(&sides)
}

fn copy_rounds(
    options: &Options,
    sides: &mut [Side; 2],
    commands: [(&mut Command, &Path); 2],
    expect: &Expect,
) -> Result<()> {
    contour::header(&format!("{} rounds (cmdop, then scp)", options.runs));
    // Start the running total of reaped children's CPU here: the build and key generation are not measured.
    let _ = children_cpu();
    let mut commands = commands;
    for round in 1..=options.runs {
        for (side, (command, dir)) in sides.iter_mut().zip(commands.iter_mut()) {
            let before = side.processes.cpu();
            let (wall, own_cpu) = timed_with_cpu(command)?;
            let after = side.processes.cpu();
            let mut cpu: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
            // The copying process itself is the first group; it has exited and was reaped by us.
            if let Some(first) = cpu.first_mut() {
                *first = own_cpu;
            }
            side.seconds.push(wall.as_secs_f64());
            side.cpu.push(cpu);
            check_and_clear(dir, expect)?;
        }
        println!(
            "  round {round}: cmdop {:.2} s, scp {:.2} s (load {:.1})",
            sides[0].seconds[round - 1],
            sides[1].seconds[round - 1],
            measure::load_average()
        );
    }
    Ok(())
}

fn copy_method(expect: &Expect) -> String {
    let what = match expect {
        Expect::File(size) => format!(
            "one {} MiB file of incompressible bytes copied to a fresh name on this machine",
            size / MIB
        ),
        Expect::Tree { files, bytes } => format!(
            "a tree of {files} files of 1 to 8 KiB ({:.1} MiB in all) in directories of 100, copied with -r \
             into a fresh directory on this machine",
            *bytes as f64 / MIB as f64
        ),
    };
    format!(
        "Method: {what}, the whole process timed (connect, login, transfer, verification, fsync). Rounds \
         alternate cmdop and scp. CPU is user + system time of the copying process and its children plus the \
         relay and agent (or sshd and its session children). Release build; scp with its default cipher and \
         protocol (SFTP)."
    )
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
    let pids = contour.daemon_pids();
    let mut sides = [
        Side::new(
            "`rsync -a -e 'cmdop rsh' TREE/ MACHINE:DIR/`",
            Processes::new(vec![
                ("rsync + cmdop", Vec::new()),
                ("relay", vec![pids.relay]),
                ("agent (+ remote rsync)", vec![pids.agent]),
            ]),
        ),
        Side::new(
            "`rsync -a -e ssh TREE/ 127.0.0.1:DIR/`",
            Processes::new(vec![
                ("rsync + ssh", Vec::new()),
                ("sshd (+ remote rsync)", vec![sshd.child.id()]),
            ]),
        ),
    ];

    contour::header(&format!(
        "{} rounds (cmdop, then ssh), each a full copy into an empty directory, then a re-run with nothing to do",
        options.runs
    ));
    let load_before = measure::load_average();
    let (mut cmdop_again, mut ssh_again) = (Vec::new(), Vec::new());
    // Start the running total of reaped children's CPU here: the build and key generation are not measured.
    let _ = children_cpu();
    for round in 1..=options.runs {
        let [cmdop_side, ssh_side] = &mut sides;
        for (side, again, command, dir) in [
            (cmdop_side, &mut cmdop_again, &mut cmdop_rsync, &cmdop_dst),
            (ssh_side, &mut ssh_again, &mut ssh_rsync, &ssh_dst),
        ] {
            let _ = fs::remove_dir_all(dir);
            let before = side.processes.cpu();
            let (wall, own_cpu) = timed_with_cpu(command)?;
            let after = side.processes.cpu();
            let mut cpu: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
            // The local rsync (and the cmdop or ssh it ran) is the first group; it has exited and was reaped.
            if let Some(first) = cpu.first_mut() {
                *first = own_cpu;
            }
            side.seconds.push(wall.as_secs_f64());
            side.cpu.push(cpu);
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
            "  round {round}: cmdop {:.0} MiB/s, ssh {:.0} MiB/s; re-run with nothing to do: cmdop {:.2} s, ssh {:.2} s (load {:.1})",
            options.mib as f64 / sides[0].seconds[round - 1],
            options.mib as f64 / sides[1].seconds[round - 1],
            cmdop_again[round - 1],
            ssh_again[round - 1],
            measure::load_average()
        );
    }
    let load_after = measure::load_average();
    let traffic = measure::last_traffic(&contour.log_path("relay"));
    drop(contour);
    drop(sshd);
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
    let report = Report {
        heading: RSYNC_SECTION,
        command: options.command("rsync"),
        method,
        unit: "MiB/s",
        amount: options.mib as f64,
        per: options.mib as f64 / 1024.0,
        per_unit: "GiB",
        loads: (load_before, load_after),
        traffic,
        build: options.build,
        streams: 1,
    };
    publish(root, RSYNC_SECTION, &report.markdown(&sides)?)
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

/// Everything a section says besides the sides' numbers.
struct Report {
    heading: &'static str,
    command: String,
    method: String,
    /// Throughput unit: `MiB/s` or `files/s`.
    unit: &'static str,
    /// What one run moves, in the unit's numerator (MiB or files).
    amount: f64,
    /// What one run moves in [`Self::per_unit`]s, the divisor of CPU seconds.
    per: f64,
    /// `GiB` or `1000 files`.
    per_unit: &'static str,
    loads: (f64, f64),
    traffic: Option<String>,
    build: bool,
    streams: usize,
}

impl Report {
    fn markdown(&self, sides: &[Side; 2]) -> Result<String> {
        let heading = self.heading;
        let mut out = format!("{heading}\n\n{}\n\n", self.method);
        let _ = write!(
            out,
            "- date: {}\n- command: `{}`\n- machine: {}\n- versions: {}\n- load average (1 min) before and after: \
             {:.1}, {:.1} on {} cores{}\n\n",
            utc_now(),
            self.command,
            machine()?,
            versions(self.build)?,
            self.loads.0,
            self.loads.1,
            thread::available_parallelism().map_or(0, usize::from),
            if self.loads.0.max(self.loads.1) > 1.5 {
                " (**other work was running: wall-clock figures are noisy; compare CPU seconds**)"
            } else {
                ""
            },
        );
        let fairness = self.streams > 1;
        let _ = writeln!(
            out,
            "| path | median {unit} | all runs ({unit}) | CPU s per {per} (median) | of which |{}\n|---|---:|---|---:|---|{}",
            if fairness {
                " smallest / largest share |"
            } else {
                ""
            },
            if fairness { "---|" } else { "" },
            unit = self.unit,
            per = self.per_unit,
        );
        for side in sides {
            let _ = write!(
                out,
                "| {} | {:.0} | {} | {:.2} | {} |",
                side.label,
                side.rate(self.amount),
                side.all_rates(self.amount),
                side.cpu_total(self.per),
                side.cpu_breakdown(self.per),
            );
            if fairness {
                let min = median(&side.shares.iter().map(|s| s.0).collect::<Vec<_>>());
                let max = median(&side.shares.iter().map(|s| s.1).collect::<Vec<_>>());
                let _ = write!(out, " {:.1} % / {:.1} % |", min * 100.0, max * 100.0);
            }
            out.push('\n');
        }
        let [cmdop, ssh] = sides;
        let ratio = cmdop.rate(self.amount) / ssh.rate(self.amount).max(1e-9);
        let cpu_ratio = cmdop.cpu_total(self.per) / ssh.cpu_total(self.per).max(1e-9);
        let verdict = if ratio >= 1.0 { "met" } else { "not met" };
        let _ = writeln!(
            out,
            "\nThroughput ratio of medians, cmdop / ssh: **{ratio:.2}×** (goal ≥ 1.0×: {verdict}); CPU per unit \
             moved, cmdop / ssh: **{cpu_ratio:.2}×**."
        );
        if let Some(traffic) = &self.traffic {
            let _ = writeln!(
                out,
                "\nThe relay's count of the client's QUIC connection over the whole run: {traffic}."
            );
        }
        for side in sides {
            if let Some(perf) = &side.perf {
                let _ = write!(
                    out,
                    "\n`perf stat` per {} moved, {} ({}):\n\n{}",
                    self.per_unit,
                    side.label,
                    measure::perf_events(),
                    measure::perf_table(perf, self.per * side.seconds.len() as f64)
                );
            }
        }
        Ok(out)
    }
}
