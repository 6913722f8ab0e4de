//! What the benchmarks read about a running process from `/proc`: resident memory, CPU time, and the
//! machine's load average, which every figure on this shared machine is reported with.

use std::fs;

use anyhow::{Context, Result};

/// Clock ticks per second of `/proc/PID/stat` times (USER_HZ, 100 on every Linux this runs on).
const TICKS_PER_SECOND: f64 = 100.0;

/// A process's resident memory, in KiB, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Memory {
    /// Resident set size now (`VmRSS`).
    pub(crate) rss: u64,
    /// The highest resident set size so far (`VmHWM`).
    pub(crate) peak: u64,
    /// Anonymous resident memory: heap, stacks (`RssAnon`).
    pub(crate) anon: u64,
    /// File-backed resident memory: the binary's code and libraries (`RssFile`).
    pub(crate) file: u64,
    /// Proportional set size: resident memory with each shared page divided among the processes sharing
    /// it (`Pss` of `/proc/PID/smaps_rollup`; 0 where the kernel has no rollup).
    pub(crate) pss: u64,
}

impl Memory {
    /// Reads `/proc/PID/status`.
    pub(crate) fn of(pid: u32) -> Result<Self> {
        let path = format!("/proc/{pid}/status");
        let text = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let mut memory = Self::parse(&text);
        if let Ok(rollup) = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
            memory.pss = field(&rollup, "Pss:");
        }
        Ok(memory)
    }

    fn parse(status: &str) -> Self {
        Self {
            rss: field(status, "VmRSS:"),
            peak: field(status, "VmHWM:"),
            anon: field(status, "RssAnon:"),
            file: field(status, "RssFile:"),
            pss: 0,
        }
    }
}

/// A `Name:   1234 kB` field of a `/proc` file, in KiB (0 if absent).
fn field(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// How many threads the process has.
pub(crate) fn threads(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|text| field(&text, "Threads:"))
        .unwrap_or(0)
}

/// User plus system CPU time of `pid` (its threads, not its children), in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_cpu(&text).with_context(|| format!("cannot parse {path}"))
}

fn parse_cpu(stat: &str) -> Option<f64> {
    // The fields after `(comm)`, which may itself contain spaces; utime and stime are the 14th and 15th
    // fields of the line, the 12th and 13th after the command.
    let (_, rest) = stat.rsplit_once(") ")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((user + system) / TICKS_PER_SECOND)
}

/// UDP datagrams the kernel dropped because a socket's receive buffer was full (`RcvbufErrors` of
/// `/proc/net/snmp`), for the whole machine.
pub(crate) fn udp_receive_drops() -> u64 {
    let text = fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = text.lines().filter(|line| line.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "RcvbufErrors")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

/// The 1-, 5- and 15-minute load averages, as `uptime` prints them.
pub(crate) fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// KiB as MiB with one decimal.
pub(crate) fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_memory_from_status() {
        let status = "Name:\tcmdop-relay\nVmHWM:\t   40000 kB\nVmRSS:\t   35000 kB\nRssAnon:\t   30000 kB\nRssFile:\t    5000 kB\n";
        assert_eq!(
            Memory::parse(status),
            Memory {
                rss: 35000,
                peak: 40000,
                anon: 30000,
                file: 5000,
                pss: 0
            }
        );
        assert_eq!(Memory::parse(""), Memory::default());
    }

    #[test]
    fn reads_cpu_time_past_a_command_with_spaces() {
        let stat = "42 (tokio rt (x)) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_cpu(stat), Some(3.0));
        assert_eq!(parse_cpu("garbage"), None);
    }
}
