//! What the transfer benchmarks measure besides wall time: CPU seconds per process (from `/proc`), the machine's
//! load while they ran, the relay's account of the UDP traffic, and optionally `perf stat` counters (system
//! calls, context switches) per process.
//!
//! CPU seconds and counts are what to compare on a busy machine: they hardly change with other load, while
//! wall-clock throughput does.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};

/// Named groups of processes (a process counts with all its descendants), measured together.
#[derive(Debug, Clone)]
pub(super) struct Processes {
    groups: Vec<(&'static str, Vec<u32>)>,
}

impl Processes {
    pub(super) fn new(groups: Vec<(&'static str, Vec<u32>)>) -> Self {
        Self { groups }
    }

    pub(super) fn labels(&self) -> Vec<&'static str> {
        self.groups.iter().map(|(label, _)| *label).collect()
    }

    /// CPU seconds (user + system, including reaped children) of each group so far.
    pub(super) fn cpu(&self) -> Vec<f64> {
        let table = proc_table();
        self.groups
            .iter()
            .map(|(_, pids)| {
                descendants(&table, pids)
                    .iter()
                    .filter_map(|pid| table.iter().find(|p| p.0 == *pid))
                    .map(|p| p.2)
                    .sum()
            })
            .collect()
    }

    /// Every pid of every group, descendants included, with its group's label.
    fn all_pids(&self) -> Vec<(&'static str, u32)> {
        let table = proc_table();
        self.groups
            .iter()
            .flat_map(|(label, pids)| {
                descendants(&table, pids)
                    .into_iter()
                    .map(move |pid| (*label, pid))
            })
            .collect()
    }
}

/// `(pid, parent pid, CPU seconds)` of every process, from `/proc/PID/stat`.
fn proc_table() -> Vec<(u32, u32, f64)> {
    let ticks = 100.0; // USER_HZ on Linux
    let mut table = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return table;
    };
    for entry in entries.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the `(comm)`, which may contain spaces.
        let Some((_, rest)) = text.rsplit_once(") ") else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ppid = fields
            .get(1)
            .and_then(|f| f.parse::<u32>().ok())
            .unwrap_or(0);
        // utime, stime, cutime, cstime.
        let cpu: f64 = [11, 12, 13, 14]
            .iter()
            .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<f64>().ok()))
            .sum();
        table.push((pid, ppid, cpu / ticks));
    }
    table
}

fn descendants(table: &[(u32, u32, f64)], roots: &[u32]) -> Vec<u32> {
    let mut members: Vec<u32> = roots.to_vec();
    let mut grew = true;
    while grew {
        grew = false;
        for (pid, ppid, _) in table {
            if members.contains(ppid) && !members.contains(pid) {
                members.push(*pid);
                grew = true;
            }
        }
    }
    members
}

/// The 1-minute load average, from `/proc/loadavg`.
pub(super) fn load_average() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The relay's account of the last connection that ended (its `connection ended` log line): datagrams,
/// bytes per datagram, system calls and the path MTU, as the relay saw them.
pub(super) fn last_traffic(relay_log: &Path) -> Option<String> {
    let log = fs::read_to_string(relay_log).ok()?;
    log.lines()
        .filter(|line| line.contains("connection ended"))
        .filter_map(|line| line.split_once("traffic=").map(|(_, rest)| rest))
        .map(|rest| rest.trim().trim_matches('"').to_owned())
        .next_back()
}

/// The `perf stat` events counted per process with `--perf`: where a process spends its system calls and how
/// often it is switched out. Software events and tracepoints only, which work inside virtual machines too.
const PERF_EVENTS: &[(&str, &str)] = &[
    ("task-clock", "CPU ms"),
    ("context-switches", "context switches"),
    ("syscalls:sys_enter_sendmsg", "sendmsg"),
    ("syscalls:sys_enter_sendmmsg", "sendmmsg"),
    ("syscalls:sys_enter_recvmsg", "recvmsg"),
    ("syscalls:sys_enter_recvmmsg", "recvmmsg"),
    ("syscalls:sys_enter_read", "read"),
    ("syscalls:sys_enter_write", "write"),
    ("syscalls:sys_enter_futex", "futex"),
    ("syscalls:sys_enter_epoll_wait", "epoll_wait"),
];

/// `perf stat` attached to every process of a [`Processes`], one counter file per process, until dropped or
/// [`PerfStat::finish`]ed.
#[derive(Debug)]
pub(super) struct PerfStat {
    runs: Vec<(&'static str, PathBuf, Child)>,
}

impl PerfStat {
    /// Starts counting; `None` (with a note) when `perf` cannot run here.
    pub(super) fn start(processes: &Processes, dir: &Path) -> Option<Self> {
        let events: Vec<&str> = PERF_EVENTS.iter().map(|(event, _)| *event).collect();
        let mut runs = Vec::new();
        for (label, pid) in processes.all_pids() {
            let out = dir.join(format!("perf-{label}-{pid}.csv"));
            let child = Command::new("perf")
                .args([
                    "stat",
                    "-x,",
                    "-e",
                    &events.join(","),
                    "-p",
                    &pid.to_string(),
                    "-o",
                ])
                .arg(&out)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            match child {
                Ok(child) => runs.push((label, out, child)),
                Err(err) => {
                    println!("  --perf: cannot run perf ({err}); install linux-perf");
                    return None;
                }
            }
        }
        // perf needs a moment to attach before the first timed round.
        std::thread::sleep(std::time::Duration::from_millis(500));
        Some(Self { runs })
    }

    /// Stops counting and returns each group's totals, per event, summed over its processes.
    pub(super) fn finish(mut self) -> Vec<(&'static str, Vec<f64>)> {
        let mut totals: Vec<(&'static str, Vec<f64>)> = Vec::new();
        for (label, out, child) in &mut self.runs {
            // SIGINT makes perf stat write its counts and exit.
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
            let counts = parse_perf_csv(&fs::read_to_string(&*out).unwrap_or_default());
            match totals.iter_mut().find(|(l, _)| l == label) {
                Some((_, sums)) => sums.iter_mut().zip(&counts).for_each(|(s, c)| *s += c),
                None => totals.push((label, counts)),
            }
        }
        self.runs.clear();
        totals
    }
}

impl Drop for PerfStat {
    fn drop(&mut self) {
        for (_, _, child) in &mut self.runs {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The counts of [`PERF_EVENTS`], in that order, from `perf stat -x,` output (value first, event third).
fn parse_perf_csv(text: &str) -> Vec<f64> {
    PERF_EVENTS
        .iter()
        .map(|(event, _)| {
            text.lines()
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split(',').collect();
                    (fields.get(2) == Some(event))
                        .then(|| fields.first().and_then(|v| v.parse::<f64>().ok()))
                        .flatten()
                })
                .sum()
        })
        .collect()
}

/// A markdown table of perf counts per GiB moved, one row per process group.
pub(super) fn perf_table(totals: &[(&'static str, Vec<f64>)], gib: f64) -> String {
    let mut out = String::from("| process |");
    for (_, name) in PERF_EVENTS {
        let _ = write!(out, " {name} |");
    }
    out.push_str("\n|---|");
    out.push_str(&"---:|".repeat(PERF_EVENTS.len()));
    out.push('\n');
    for (label, counts) in totals {
        let _ = write!(out, "| {label} |");
        for count in counts {
            let _ = write!(out, " {} |", human(count / gib.max(1e-9)));
        }
        out.push('\n');
    }
    out
}

fn human(value: f64) -> String {
    if value >= 10_000.0 {
        format!("{:.0}k", value / 1000.0)
    } else {
        format!("{value:.0}")
    }
}

/// The perf events' names, for the method text.
pub(super) fn perf_events() -> String {
    PERF_EVENTS
        .iter()
        .map(|(event, _)| *event)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs `perf stat -e instructions true` once: whether this machine counts instructions (virtual machines
/// often do not expose hardware counters).
pub(super) fn check_perf() -> Result<()> {
    let status = Command::new("perf")
        .args(["stat", "-e", "task-clock", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("cannot run perf; install Debian's linux-perf")?;
    anyhow::ensure!(status.success(), "perf stat failed: {status}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_perf_csv() {
        let text = "# started on x\n\n1234.5,msec,task-clock,1234500,100.00,1.0,CPUs utilized\n\
                    42,,context-switches,1234500,100.00,34.0,/sec\n<not counted>,,syscalls:sys_enter_read,0,0,,\n\
                    7,,syscalls:sys_enter_sendmsg,1,100.00,,\n";
        let counts = parse_perf_csv(text);
        assert_eq!(counts[0], 1234.5);
        assert_eq!(counts[1], 42.0);
        assert_eq!(counts[2], 7.0);
        assert_eq!(counts[6], 0.0);
    }

    #[test]
    fn finds_the_last_traffic_line() {
        let dir = std::env::temp_dir().join(format!("cmdop-measure-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("relay.log");
        fs::write(
            &log,
            "x INFO connection ended remote=1 traffic=sent 1 datagrams\n\
             y INFO other\nz INFO connection ended remote=2 traffic=sent 2 datagrams\n",
        )
        .unwrap();
        assert_eq!(last_traffic(&log).as_deref(), Some("sent 2 datagrams"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
