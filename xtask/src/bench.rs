//! `cargo xtask bench exec`: the wall time of a whole `cmdop connect exec M -- true` process against
//! `ssh 127.0.0.1 true` to a local sshd, on this machine, in the same run, interleaved.
//!
//! The bench sets up its own sshd (throwaway host and user keys, its own config, a free loopback port) and its
//! own contour in a temporary directory, and removes both at the end. Results go to `docs/benchmarks.md`.

use std::fmt::Write as _;
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::contour::{self, Binaries, Contour};
use crate::quickstart::exec_available;

mod idle;
mod link_mtu;
mod measure;
pub(crate) mod procfs;
mod scale;
mod sink;
mod transfer;

const USAGE: &str = "usage: cargo xtask bench exec [--runs N] [--no-build]
       cargo xtask bench keystroke [--keystrokes N] [--no-build]

  --runs N    timed rounds, one cmdop and one ssh process each (default 30), after 3 warm-up rounds
  --no-build  use the release binaries already in target/release (or in $CMDOP_BENCH_BINARIES) instead of
              building them

Every benchmark also takes --link-mtu BYTES: it then runs inside a network namespace of its own whose
loopback has that MTU (1500 stands in for an Ethernet path), and writes a section of its own";

const DEFAULT_RUNS: usize = 30;
/// With `--no-build`, take the binaries from this directory instead of target/release.
const BINARIES_ENV: &str = "CMDOP_BENCH_BINARIES";
const WARMUP_RUNS: usize = 3;
const SSHD: &str = "/usr/sbin/sshd";
/// cmdop's exec time as a share of ssh's that `bench exec` aims at (issue 16).
const GOAL: f64 = 0.03;
/// The heading of this benchmark's section in `docs/benchmarks.md`; the section is replaced on every run.
const SECTION: &str = "## exec: cmdop vs ssh";

/// Runs `cargo xtask bench ARGS`.
pub(crate) fn run(root: &Path, args: &[String]) -> Result<()> {
    if let Some((mtu, args)) = link_mtu::take(args)? {
        return link_mtu::rerun_inside(root, mtu, &args);
    }
    let (which, rest) = args.split_first().context(USAGE)?;
    match which.as_str() {
        "exec" => {}
        "tunnel" => return transfer::tunnel(root, rest),
        "cp" => return transfer::cp(root, rest),
        "rsync" => return transfer::rsync(root, rest),
        "keystroke" => return crate::keystroke::run(root, rest),
        "scale" => return scale::run(root, rest),
        "idle" => return idle::run(root, rest),
        _ => bail!(
            "unknown benchmark `{which}`\n\n{USAGE}\n\n{}\n\n{}\n\n{}",
            transfer::USAGE,
            scale::USAGE,
            idle::USAGE
        ),
    }
    let (runs, build) = parse_args(rest)?;

    let (_scratch, sshd, contour) = setup(root, build)?;

    contour::header("what is measured");
    let exec = exec_available(&contour);
    let mut cmdop = contour.cli();
    if exec {
        cmdop.args(["connect", "exec", &contour.machine, "--", "true"]);
    } else {
        // Stand-in until `connect exec` lands: the same connect, handshake and credential check, one request.
        cmdop.args(["connect", "--list"]);
        println!(
            "  `cmdop connect exec` is not in this build: measuring `cmdop connect --list` as a STAND-IN"
        );
    }
    let mut ssh = sshd.client();
    println!("{}", contour::shell_line(&cmdop));
    println!("{}", contour::shell_line(&ssh));

    contour::header(&format!(
        "{WARMUP_RUNS} warm-up rounds, then {runs} timed rounds (one cmdop and one ssh process each)"
    ));
    for _ in 0..WARMUP_RUNS {
        time(&mut cmdop)?;
        time(&mut ssh)?;
    }
    let mut cmdop_times = Vec::with_capacity(runs);
    let mut ssh_times = Vec::with_capacity(runs);
    for _ in 0..runs {
        cmdop_times.push(time(&mut cmdop)?);
        ssh_times.push(time(&mut ssh)?);
    }
    drop(contour);
    drop(sshd);

    let cmdop_label = if exec {
        "`cmdop connect exec MACHINE -- true`".to_owned()
    } else {
        "`cmdop connect --list` (stand-in: `connect exec` not yet built)".to_owned()
    };
    let report = Report {
        date: utc_now(),
        command: format!(
            "cargo xtask bench exec --runs {runs}{}",
            if build { "" } else { " --no-build" }
        ),
        machine: machine()?,
        versions: versions(build)?,
        runs,
        exec,
        rows: vec![
            (cmdop_label, Summary::of(&cmdop_times)?),
            (
                "`ssh -i KEY -p PORT 127.0.0.1 true`".to_owned(),
                Summary::of(&ssh_times)?,
            ),
        ],
    };
    publish(root, SECTION, &report.markdown())
}

/// What every benchmark against ssh needs: the release binaries (built unless `build` is false), a scratch
/// directory, a local sshd with throwaway keys, and a contour with one machine. Dropping them stops it all.
pub(crate) fn setup(root: &Path, build: bool) -> Result<(Scratch, Sshd, Contour)> {
    let bins = if build {
        contour::header("building the release binaries");
        Binaries::build_release(root)?
    } else if let Some(dir) = std::env::var_os(BINARIES_ENV) {
        // For comparing builds: each one's binaries kept in a directory of their own.
        Binaries::existing_in(Path::new(&dir))?
    } else {
        Binaries::existing_release(root)?
    };
    let scratch = Scratch::new()?;
    contour::header("a local sshd with a throwaway host key and an ed25519 user key");
    let sshd = Sshd::start(scratch.path())?;
    let contour = Contour::up(bins, &scratch.path().join("contour"), "127.0.0.1:0")?;
    Ok((scratch, sshd, contour))
}

/// Prints a benchmark's section and writes it into `docs/benchmarks.md` under `heading`.
pub(crate) fn publish(root: &Path, heading: &str, section: &str) -> Result<()> {
    let (heading, section) = link_mtu::mark(heading, section);
    let (heading, section) = (heading.as_str(), section.as_str());
    contour::header("results");
    println!("{section}");
    let doc = root.join("docs").join("benchmarks.md");
    let old = fs::read_to_string(&doc).unwrap_or_default();
    fs::write(&doc, replace_section(&old, heading, section))
        .with_context(|| format!("cannot write {}", doc.display()))?;
    println!("written to {}", doc.display());
    Ok(())
}

/// Parses `[--runs N] [--no-build]` into the number of timed rounds and whether to build first.
fn parse_args(args: &[String]) -> Result<(usize, bool)> {
    let mut runs = DEFAULT_RUNS;
    let mut build = true;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--no-build" => build = false,
            "--runs" => {
                let n = args.next().context("--runs takes a number")?;
                runs = match n.parse::<usize>() {
                    Ok(n) if n >= 1 => n,
                    _ => bail!("--runs takes a positive whole number, got `{n}`"),
                };
            }
            other => bail!("bench exec does not take `{other}`\n\n{USAGE}"),
        }
    }
    Ok((runs, build))
}

/// Runs the command to completion with its output discarded and returns its wall time.
fn time(command: &mut Command) -> Result<Duration> {
    command.stdout(Stdio::null()).stderr(Stdio::piped());
    let start = Instant::now();
    let output = command
        .output()
        .with_context(|| format!("cannot run {}", contour::shell_line(command)))?;
    let elapsed = start.elapsed();
    if !output.status.success() {
        bail!(
            "`{}` exited with {}: {}",
            contour::shell_line(command),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(elapsed)
}

/// A temporary directory removed on drop (std has none, and this crate keeps its dependencies to three).
#[derive(Debug)]
pub(crate) struct Scratch(PathBuf);

impl Scratch {
    pub(crate) fn new() -> Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let path =
            std::env::temp_dir().join(format!("cmdop-bench-{}-{nanos:08x}", std::process::id()));
        fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self(path))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A foreground sshd (`-D`) on a free loopback port, killed on drop.
#[derive(Debug)]
pub(crate) struct Sshd {
    child: Child,
    port: u16,
    user_key: PathBuf,
}

impl Sshd {
    pub(crate) fn start(dir: &Path) -> Result<Self> {
        install_sshd()?;
        let dir = dir.join("ssh");
        fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let host_key = dir.join("host_ed25519");
        let user_key = dir.join("user_ed25519");
        for key in [&host_key, &user_key] {
            let mut keygen = Command::new("ssh-keygen");
            keygen
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(key);
            contour::run_shown(&mut keygen)?;
        }
        let authorized = dir.join("authorized_keys");
        fs::copy(user_key.with_extension("pub"), &authorized)
            .context("cannot write authorized_keys")?;
        // sshd refuses to start without its privilege-separation directory, which only the package's
        // service unit creates.
        fs::create_dir_all("/run/sshd").context("cannot create /run/sshd")?;
        let port = free_port()?;
        let config = dir.join("sshd_config");
        let text = format!(
            "ListenAddress 127.0.0.1\nPort {port}\nHostKey {}\nAuthorizedKeysFile {}\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
             PermitRootLogin prohibit-password\nPidFile {}\n\
             UseDNS no\nGSSAPIAuthentication no\nSubsystem sftp internal-sftp\n",
            host_key.display(),
            authorized.display(),
            dir.join("sshd.pid").display()
        );
        fs::write(&config, text).context("cannot write sshd_config")?;
        println!("  sshd_config: {}", config.display());
        let mut sshd = Command::new(SSHD);
        sshd.arg("-D").arg("-f").arg(&config);
        println!("{} &", contour::shell_line(&sshd));
        let child = sshd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start sshd")?;
        let mut sshd = Self {
            child,
            port,
            user_key,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = sshd.child.try_wait().context("cannot poll sshd")? {
                bail!(
                    "sshd exited with {status}; run `{SSHD} -D -e -f {}` to see why",
                    config.display()
                );
            }
            if Instant::now() > deadline {
                bail!("sshd did not listen on 127.0.0.1:{port} within 10 s");
            }
            thread::sleep(Duration::from_millis(50));
        }
        let mut check = sshd.client();
        contour::run_shown(&mut check)?;
        Ok(sshd)
    }

    /// The listening sshd's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn client(&self) -> Command {
        let mut ssh = self.base("ssh");
        ssh.args(["-p", &self.port.to_string(), "127.0.0.1", "true"]);
        ssh
    }

    /// `ssh` to this sshd with the throwaway key, up to the host: the caller adds the remote command.
    pub(crate) fn command(&self) -> Command {
        let mut ssh = self.base("ssh");
        ssh.args(["-p", &self.port.to_string(), "127.0.0.1"]);
        ssh
    }

    /// `program` (ssh or scp) with this sshd's user key and the options of a fair, quiet, non-interactive
    /// baseline, but no port or destination.
    fn base(&self, program: &str) -> Command {
        let mut ssh = Command::new(program);
        ssh.args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            // Debian's ssh_config turns GSSAPI on; off it makes ssh faster, the fairer baseline to beat.
            "-o",
            "GSSAPIAuthentication=no",
            "-i",
        ])
        .arg(&self.user_key);
        ssh.stdin(Stdio::null());
        ssh
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Installs Debian's openssh-server when there is no sshd.
fn install_sshd() -> Result<()> {
    if Path::new(SSHD).exists() {
        return Ok(());
    }
    println!("  {SSHD} is missing; installing openssh-server");
    contour::run_shown(Command::new("apt-get").arg("update"))?;
    contour::run_shown(
        Command::new("apt-get")
            .args(["install", "-y", "openssh-server"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// A loopback TCP port nobody listens on right now.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr().context("no local address")?.port())
}

/// The order statistics of one command's wall times.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Summary {
    pub(crate) min: Duration,
    pub(crate) median: Duration,
    pub(crate) p90: Duration,
    pub(crate) p99: Duration,
    pub(crate) max: Duration,
}

impl Summary {
    pub(crate) fn of(samples: &[Duration]) -> Result<Self> {
        let mut sorted = samples.to_vec();
        sorted.sort();
        let (Some(&min), Some(&max)) = (sorted.first(), sorted.last()) else {
            bail!("no samples to summarise");
        };
        let n = sorted.len();
        let middle = |i: usize| sorted.get(i).copied().unwrap_or(max);
        let median = if n % 2 == 1 {
            middle(n / 2)
        } else {
            (middle(n / 2 - 1) + middle(n / 2)) / 2
        };
        // Nearest rank: the smallest sample with at least 90% of the samples at or below it.
        let p90 = middle((n * 9).div_ceil(10).saturating_sub(1));
        let p99 = middle((n * 99).div_ceil(100).saturating_sub(1));
        Ok(Self {
            min,
            median,
            p90,
            p99,
            max,
        })
    }
}

#[derive(Debug)]
struct Report {
    date: String,
    command: String,
    machine: String,
    versions: String,
    runs: usize,
    exec: bool,
    rows: Vec<(String, Summary)>,
}

impl Report {
    fn markdown(&self) -> String {
        let mut out = format!("{SECTION}\n\n");
        if !self.exec {
            out.push_str(
                "**Stand-in:** this build's CLI has no `cmdop connect exec` yet, so the cmdop row measures \
                 `cmdop connect --list` (connect to the relay, QUIC and TLS handshake with the pinned \
                 certificate, credential check, one request, exit) instead. Re-run the command below once \
                 `connect exec` exists.\n\n",
            );
        }
        let _ = write!(
            out,
            "Method: the wall time of whole processes, started by the bench and waited for, stdout \
             discarded. Each round runs one cmdop process and then one ssh process, so both see the same \
             machine state; {WARMUP_RUNS} untimed warm-up rounds, then {runs} timed rounds. The relay, the \
             agent and sshd (key authentication, its own config on a free loopback port) all run on this \
             machine, on 127.0.0.1. Release build.\n\n\
             - date: {date}\n- command: `{command}`\n- machine: {machine}\n- versions: {versions}\n\n\
             | command | min | median | p90 | max |\n|---|---:|---:|---:|---:|\n",
            runs = self.runs,
            date = self.date,
            command = self.command,
            machine = self.machine,
            versions = self.versions,
        );
        for (label, s) in &self.rows {
            let _ = writeln!(
                out,
                "| {label} | {} | {} | {} | {} |",
                ms(s.min),
                ms(s.median),
                ms(s.p90),
                ms(s.max)
            );
        }
        if let [(_, cmdop), (_, ssh), ..] = self.rows.as_slice() {
            let ratio =
                cmdop.median.as_secs_f64() / ssh.median.as_secs_f64().max(f64::MIN_POSITIVE);
            // Issue 16's goal; the first one, 0.25×, was met long ago.
            let verdict = if ratio <= GOAL { "met" } else { "not met" };
            let what = if self.exec { "" } else { " (stand-in)" };
            let _ = writeln!(
                out,
                "\nRatio of medians, cmdop{what} / ssh: **{ratio:.3}×** (goal ≤ {GOAL}×: {verdict})."
            );
        }
        out
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Replaces the part of the document under `heading` (up to the next `## ` heading), or appends it.
pub(crate) fn replace_section(doc: &str, heading: &str, section: &str) -> String {
    let doc = if doc.trim().is_empty() {
        "# Benchmarks\n\nNumbers from `cargo xtask bench …`; each section is rewritten by its benchmark.\n"
    } else {
        doc
    };
    let mut before = String::new();
    let mut after = String::new();
    let mut state = 0; // 0: before the section, 1: inside it, 2: after it
    for line in doc.split_inclusive('\n') {
        match state {
            0 if line.trim_end() == heading => state = 1,
            0 => before.push_str(line),
            1 if line.starts_with("## ") => {
                state = 2;
                after.push_str(line);
            }
            1 => {}
            _ => after.push_str(line),
        }
    }
    let mut out = before.trim_end().to_owned();
    out.push_str("\n\n");
    out.push_str(section.trim_end());
    out.push('\n');
    if !after.is_empty() {
        out.push('\n');
        out.push_str(&after);
    }
    out
}

pub(crate) fn machine() -> Result<String> {
    let cores = thread::available_parallelism().map_or(0, usize::from);
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map_or("unknown CPU", |(_, name)| name.trim())
        .to_owned();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_owned(), |k| k.trim().to_owned());
    Ok(format!(
        "{cores} cores (nproc), {model}, Linux {kernel}{}",
        link_mtu::machine_note()
    ))
}

pub(crate) fn versions(built: bool) -> Result<String> {
    // `ssh -V` prints to stderr.
    let ssh = Command::new("ssh")
        .arg("-V")
        .output()
        .context("cannot run ssh -V")?;
    let ssh = String::from_utf8_lossy(&ssh.stderr).trim().to_owned();
    let commit = contour::capture(Command::new("git").args(["rev-parse", "--short=12", "HEAD"]))
        .map_or_else(|_| "unknown".to_owned(), |c| c.trim().to_owned());
    let dirty = contour::capture(Command::new("git").args([
        "status",
        "--porcelain",
        "--untracked-files=no",
    ]))
    .is_ok_and(|s| !s.trim().is_empty());
    let tree = if dirty {
        " with uncommitted changes in the work tree"
    } else {
        ""
    };
    // With --no-build the binaries may predate HEAD; say so rather than let the commit vouch for them.
    let binaries = match (built, std::env::var(BINARIES_ENV)) {
        (true, _) => "built from it".to_owned(),
        (false, Ok(dir)) => format!("binaries from {dir}, not rebuilt"),
        (false, Err(_)) => "binaries already in target/release, not rebuilt".to_owned(),
    };
    Ok(format!("cmdop git {commit}{tree} ({binaries}); {ssh}"))
}

/// The current UTC time as `YYYY-MM-DD HH:MM UTC`, computed from the Unix clock (std has no calendar).
pub(crate) fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_utc(secs)
}

fn format_utc(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm, for days since 1970-01-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|&v| Duration::from_millis(v)).collect()
    }

    #[test]
    fn summarises_an_odd_and_an_even_number_of_samples() {
        let odd = Summary::of(&ms(&[5, 1, 4, 2, 3])).unwrap();
        assert_eq!(odd.min, Duration::from_millis(1));
        assert_eq!(odd.median, Duration::from_millis(3));
        assert_eq!(odd.max, Duration::from_millis(5));
        assert_eq!(odd.p90, Duration::from_millis(5));

        let even = Summary::of(&ms(&[10, 1, 9, 2, 8, 3, 7, 4, 6, 5])).unwrap();
        assert_eq!(even.median, Duration::from_micros(5500));
        assert_eq!(even.p90, Duration::from_millis(9));
        assert!(Summary::of(&[]).is_err());
    }

    #[test]
    fn replaces_only_its_own_section() {
        let doc = "# Benchmarks\n\nintro\n\n## other\n\nkeep me\n\n## exec: cmdop vs ssh\n\nold numbers\n\n## later\n\nkeep me too\n";
        let new = replace_section(doc, SECTION, "## exec: cmdop vs ssh\n\nnew numbers\n");
        assert_eq!(
            new,
            "# Benchmarks\n\nintro\n\n## other\n\nkeep me\n\n## exec: cmdop vs ssh\n\nnew numbers\n\n## later\n\nkeep me too\n"
        );
        // Running twice changes nothing more.
        assert_eq!(
            replace_section(&new, SECTION, "## exec: cmdop vs ssh\n\nnew numbers\n"),
            new
        );
    }

    #[test]
    fn starts_a_document_when_there_is_none() {
        let new = replace_section("", SECTION, "## exec: cmdop vs ssh\n\nnumbers\n");
        assert!(new.starts_with("# Benchmarks\n"));
        assert!(new.ends_with("## exec: cmdop vs ssh\n\nnumbers\n"));
    }

    #[test]
    fn parses_the_arguments() {
        assert_eq!(parse_args(&[]).unwrap(), (DEFAULT_RUNS, true));
        assert_eq!(
            parse_args(&["--runs".into(), "20".into()]).unwrap(),
            (20, true)
        );
        assert_eq!(
            parse_args(&["--no-build".into(), "--runs".into(), "5".into()]).unwrap(),
            (5, false)
        );
        assert!(parse_args(&["--runs".into(), "0".into()]).is_err());
        assert!(parse_args(&["--runs".into()]).is_err());
        assert!(parse_args(&["--fast".into()]).is_err());
    }

    #[test]
    fn formats_dates_in_utc() {
        assert_eq!(format_utc(0), "1970-01-01 00:00 UTC");
        // 2026-11-28 15:56 UTC, the day this was written.
        assert_eq!(format_utc(1_795_881_360), "2026-11-28 15:56 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00 UTC");
    }

    #[test]
    fn labels_a_stand_in_as_such() {
        let s = Summary::of(&ms(&[1, 2, 3])).unwrap();
        let report = Report {
            date: "d".into(),
            command: "c".into(),
            machine: "m".into(),
            versions: "v".into(),
            runs: 3,
            exec: false,
            rows: vec![("a".into(), s), ("b".into(), s)],
        };
        let text = report.markdown();
        assert!(text.starts_with(SECTION));
        assert!(text.contains("**Stand-in:**"));
        assert!(text.contains("cmdop (stand-in) / ssh: **1.000×**"));
    }
}
