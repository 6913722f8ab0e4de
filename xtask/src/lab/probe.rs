//! What the lab watches from outside the daemons, through `/proc`: their memory (resident set, sampled) and
//! the relay's sockets (any connection it opened itself, catalog item N2).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// Resident set now and at its peak (`VmRSS`, `VmHWM` of `/proc/PID/status`), KiB.
pub(crate) fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Samples the resident set of named processes every 200 ms on a thread and keeps each one's highest value.
#[derive(Debug)]
pub(crate) struct RssSampler {
    stop: Arc<AtomicBool>,
    peaks: Arc<Mutex<BTreeMap<String, u64>>>,
    thread: Option<JoinHandle<()>>,
}

impl RssSampler {
    /// Starts sampling `(name, pid)` pairs.
    pub(crate) fn start(processes: Vec<(String, u32)>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peaks: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
        let (thread_stop, thread_peaks) = (Arc::clone(&stop), Arc::clone(&peaks));
        let thread = thread::spawn(move || {
            while !thread_stop.load(Ordering::Relaxed) {
                for (name, pid) in &processes {
                    if let (Some((rss, _)), Ok(mut peaks)) = (rss_kib(*pid), thread_peaks.lock()) {
                        let peak = peaks.entry(name.clone()).or_insert(0);
                        *peak = (*peak).max(rss);
                    }
                }
                thread::sleep(Duration::from_millis(200));
            }
        });
        Self {
            stop,
            peaks,
            thread: Some(thread),
        }
    }

    /// Stops sampling and returns each process's highest resident set seen, KiB.
    pub(crate) fn finish(mut self) -> BTreeMap<String, u64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.peaks.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One socket of a process, from `/proc/PID/net/{tcp,tcp6,udp,udp6}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Socket {
    /// `tcp`, `tcp6`, `udp` or `udp6`.
    pub(crate) table: &'static str,
    /// Local address, as the kernel prints it (hex).
    pub(crate) local: String,
    /// Remote address (hex); all zeros when unconnected.
    pub(crate) remote: String,
    /// Kernel state number (TCP: 01 established, 02 SYN sent, 0A listen).
    pub(crate) state: u8,
}

impl Socket {
    fn local_port(&self) -> Option<&str> {
        self.local.rsplit(':').next()
    }

    fn remote_is_set(&self) -> bool {
        self.remote
            .rsplit(':')
            .next()
            .is_some_and(|port| port.chars().any(|c| c != '0'))
    }
}

/// The sockets process `pid` holds (matched by inode against its namespace's tables).
pub(crate) fn sockets(pid: u32) -> Vec<Socket> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let inodes: BTreeSet<String> = fds
        .filter_map(Result::ok)
        .filter_map(|fd| fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            target
                .strip_prefix("socket:[")
                .and_then(|rest| rest.strip_suffix(']'))
                .map(str::to_owned)
        })
        .collect();
    let mut found = Vec::new();
    for table in ["tcp", "tcp6", "udp", "udp6"] {
        let text = fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        found.extend(
            parse_table(table, &text)
                .into_iter()
                .filter(|(_, inode)| inodes.contains(inode))
                .map(|(s, _)| s),
        );
    }
    found
}

fn parse_table(table: &'static str, text: &str) -> Vec<(Socket, String)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            Some((
                Socket {
                    table,
                    local: (*fields.get(1)?).to_owned(),
                    remote: (*fields.get(2)?).to_owned(),
                    state: u8::from_str_radix(fields.get(3)?, 16).ok()?,
                },
                (*fields.get(9)?).to_owned(),
            ))
        })
        .collect()
}

/// How many established TCP connections process `pid` has to `port` (on any address).
pub(crate) fn tcp_connections_to(pid: u32, port: u16) -> usize {
    let port = format!("{port:04X}");
    sockets(pid)
        .iter()
        .filter(|s| s.table.starts_with("tcp") && s.state == 0x01)
        .filter(|s| s.remote.rsplit(':').next() == Some(port.as_str()))
        .count()
}

/// The sockets among `all` that the process opened towards someone: a TCP connection being made, an
/// established TCP connection not accepted on one of its listening ports, or a connected UDP socket.
pub(crate) fn outgoing(all: &[Socket]) -> Vec<Socket> {
    const ESTABLISHED: u8 = 0x01;
    const SYN_SENT: u8 = 0x02;
    const LISTEN: u8 = 0x0a;
    let listening: BTreeSet<&str> = all
        .iter()
        .filter(|s| s.table.starts_with("tcp") && s.state == LISTEN)
        .filter_map(Socket::local_port)
        .collect();
    all.iter()
        .filter(|s| {
            if s.table.starts_with("tcp") {
                s.state == SYN_SENT
                    || (s.state == ESTABLISHED
                        && !s.local_port().is_some_and(|p| listening.contains(p)))
            } else {
                s.remote_is_set()
            }
        })
        .cloned()
        .collect()
}

/// What a [`SocketWatch`] collected: samples taken, every socket seen, the outgoing ones.
#[derive(Debug, Default)]
struct Seen {
    samples: u64,
    all: BTreeSet<Socket>,
    outgoing: BTreeSet<Socket>,
}

/// Watches a process's sockets every 20 ms on a thread, collecting every outgoing one ever seen.
#[derive(Debug)]
pub(crate) struct SocketWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    thread: Option<JoinHandle<()>>,
}

impl SocketWatch {
    /// Starts watching `pid`.
    pub(crate) fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let (thread_stop, thread_seen) = (Arc::clone(&stop), Arc::clone(&seen));
        let thread = thread::spawn(move || {
            while !thread_stop.load(Ordering::Relaxed) {
                let all = sockets(pid);
                let out = outgoing(&all);
                if let Ok(mut seen) = thread_seen.lock() {
                    seen.samples += 1;
                    seen.all.extend(all);
                    seen.outgoing.extend(out);
                }
                thread::sleep(Duration::from_millis(20));
            }
        });
        Self {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Stops and returns (samples taken, every socket seen, the outgoing ones).
    pub(crate) fn finish(mut self) -> (u64, Vec<Socket>, Vec<Socket>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.seen
            .lock()
            .map(|s| {
                (
                    s.samples,
                    s.all.iter().cloned().collect(),
                    s.outgoing.iter().cloned().collect(),
                )
            })
            .unwrap_or_default()
    }
}

impl Drop for SocketWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:A3B1 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0
   1: 0100007F:A3B1 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 112 1 0
   2: 0202004D:C350 0101004D:01BB 02 00000000:00000000 00:00000000 00000000     0        0 113 1 0
   3: 0202004D:C351 0101004D:0050 01 00000000:00000000 00:00000000 00000000     0        0 114 1 0
";
    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  10: 0202004D:1151 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 120 2 0 0
  11: 0202004D:E001 0101004D:0035 01 00000000:00000000 00:00000000 00000000     0        0 121 2 0 0
";

    #[test]
    fn finds_what_a_process_dialled_and_not_what_it_accepted() {
        let mut all: Vec<Socket> = parse_table("tcp", TCP)
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        all.extend(parse_table("udp", UDP).into_iter().map(|(s, _)| s));
        assert_eq!(all.len(), 6);
        let out = outgoing(&all);
        let locals: Vec<&str> = out.iter().map(|s| s.local.as_str()).collect();
        // The SYN_SENT socket, the established one on a non-listening port, the connected UDP socket; not the
        // listener, its accepted connection, or the unconnected QUIC socket.
        assert_eq!(
            locals,
            vec!["0202004D:C350", "0202004D:C351", "0202004D:E001"]
        );
    }

    #[test]
    fn reads_this_processs_own_memory() {
        let (rss, peak) = rss_kib(std::process::id()).unwrap();
        assert!(rss > 0 && peak >= rss);
    }
}
