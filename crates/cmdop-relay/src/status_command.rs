//! `cmdop-relay status`: what the data directory holds, whether a relay serves it now, and (when that relay
//! serves metrics) its live connections.
//!
//! A running `serve` writes `serve.json` into the data directory (pid, addresses, start time) and removes it on
//! a clean stop; `status` trusts it only while that pid is still a `cmdop-relay` process.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result};
use cmdop_relay::admin;
use cmdop_relay::store::Store;
use cmdop_relay::tls::stored_fingerprint;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// File name of the running relay's state inside the data directory.
pub(crate) const RUN_STATE_FILE: &str = "serve.json";

/// What a running `serve` records about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RunState {
    pub(crate) pid: u32,
    pub(crate) listen: SocketAddr,
    pub(crate) metrics: Option<SocketAddr>,
    pub(crate) fingerprint: String,
    pub(crate) started_at: u64,
    pub(crate) version: String,
}

impl RunState {
    /// Writes `serve.json`; the returned guard removes it when `serve` returns.
    pub(crate) fn publish(&self, data_dir: &Path) -> Result<RunStateGuard> {
        let path = data_dir.join(RUN_STATE_FILE);
        let text = serde_json::to_vec_pretty(self)?;
        cmdop_identity::store::write_private_file(&path, &text)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(RunStateGuard { path })
    }
}

/// Removes `serve.json` on drop.
#[derive(Debug)]
pub(crate) struct RunStateGuard {
    path: PathBuf,
}

impl Drop for RunStateGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What `status` reports, gathered from the data directory, `serve.json` and a metrics scrape.
struct Summary<'a> {
    data_dir: &'a Path,
    running: Option<RunState>,
    fingerprint: Option<String>,
    fleets: Vec<String>,
    machines: usize,
    online: usize,
    active_credentials: usize,
    live: Option<LiveCounts>,
}

/// Prints the summary of the relay whose data directory is `data_dir`.
pub(crate) fn run(data_dir: &Path, json: bool, now: u64) -> Result<()> {
    if !data_dir.join("relay.db").is_file() {
        anyhow::bail!(
            "{} holds no relay database; check --data-dir (or data_dir in the config file), or run `cmdop-relay serve` once",
            data_dir.display()
        );
    }
    let store = Store::open(data_dir)?;
    let machines = store.machines(None)?;
    let now = cmdop_fleet::Timestamp::from_unix_seconds(now);
    let running = running_relay(data_dir);
    let live = running
        .as_ref()
        .and_then(|state| state.metrics)
        .and_then(|addr| scrape(addr).ok())
        .map(|text| LiveCounts::from_metrics(&text));
    let summary = Summary {
        data_dir,
        fingerprint: running
            .as_ref()
            .map(|s| s.fingerprint.clone())
            .or_else(|| stored_fingerprint(data_dir).ok().map(|f| f.to_string())),
        running,
        fleets: store
            .fleets()?
            .iter()
            .map(|f| f.fleet.name.to_string())
            .collect(),
        machines: machines.len(),
        online: machines.iter().filter(|(_, m)| m.online).count(),
        active_credentials: store
            .credentials(None)?
            .iter()
            .filter(|c| admin::is_active(c, now))
            .count(),
        live,
    };
    if json {
        print_json(&summary);
    } else {
        print_text(&summary);
    }
    Ok(())
}

fn print_json(summary: &Summary<'_>) {
    let running = summary.running.as_ref();
    let live = summary.live.as_ref();
    let value = json!({
        "data_dir": summary.data_dir,
        "running": running.is_some(),
        "pid": running.map(|s| s.pid),
        "listen": running.map(|s| s.listen.to_string()),
        "metrics": running.and_then(|s| s.metrics).map(|a| a.to_string()),
        "started_at": running.map(|s| admin::format_time(Some(s.started_at))),
        "version": running.map(|s| s.version.clone()),
        "fingerprint": summary.fingerprint,
        "fleets": summary.fleets,
        "machines": summary.machines,
        "machines_online": summary.online,
        "credentials_active": summary.active_credentials,
        "agents_connected": live.map(|l| l.agents),
        "clients_connected": live.map(|l| l.clients),
        "streams_active": live.map(|l| l.streams),
        "resident_memory_bytes": live.map(|l| l.memory),
    });
    println!("{value:#}");
}

fn print_text(summary: &Summary<'_>) {
    println!("data dir:     {}", summary.data_dir.display());
    match &summary.running {
        Some(state) => {
            println!(
                "relay:        running (pid {}, since {}, version {})",
                state.pid,
                admin::format_time(Some(state.started_at)),
                state.version
            );
            println!("listening on: {} (UDP)", state.listen);
            match state.metrics {
                Some(addr) => println!("metrics:      http://{addr}/metrics"),
                None => println!("metrics:      off (serve --metrics ADDR)"),
            }
        }
        None => println!("relay:        not running on this data directory"),
    }
    if let Some(fingerprint) = &summary.fingerprint {
        println!("fingerprint:  {fingerprint}");
    }
    println!(
        "fleets:       {} ({})",
        summary.fleets.len(),
        summary.fleets.join(", ")
    );
    println!(
        "machines:     {} ({} online)",
        summary.machines, summary.online
    );
    println!("credentials:  {} active", summary.active_credentials);
    if let Some(live) = &summary.live {
        println!(
            "connected:    {} agents, {} clients, {} streams; {} MiB resident",
            live.agents,
            live.clients,
            live.streams,
            live.memory / (1024 * 1024)
        );
    }
}

/// The relay serving `data_dir` now, if `serve.json` names a live `cmdop-relay` process.
fn running_relay(data_dir: &Path) -> Option<RunState> {
    let text = std::fs::read(data_dir.join(RUN_STATE_FILE)).ok()?;
    let state: RunState = serde_json::from_slice(&text).ok()?;
    // A stale file (the relay was killed) may name a pid that now belongs to something else.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", state.pid)).ok()?;
    String::from_utf8_lossy(&cmdline)
        .contains("cmdop-relay")
        .then_some(state)
}

/// `GET /metrics` from the running relay, with short timeouts: status must answer even if it hangs.
fn scrape(addr: SocketAddr) -> std::io::Result<String> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// Sums of the live gauges in a metrics scrape.
#[derive(Debug, Default, PartialEq, Eq)]
struct LiveCounts {
    agents: i64,
    clients: i64,
    streams: i64,
    memory: i64,
}

impl LiveCounts {
    fn from_metrics(text: &str) -> Self {
        let mut counts = Self::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<i64>() else {
                continue;
            };
            let name = name.split('{').next().unwrap_or(name);
            match name {
                "cmdop_relay_agents_connected" => counts.agents += value,
                "cmdop_relay_clients_connected" => counts.clients += value,
                "cmdop_relay_streams_active" => counts.streams += value,
                "cmdop_relay_resident_memory_bytes" => counts.memory = value,
                _ => {}
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_live_gauges_of_a_scrape() {
        let text = "HTTP/1.1 200 OK\r\n\r\n# HELP x\ncmdop_relay_agents_connected{fleet=\"a\"} 2\n\
            cmdop_relay_agents_connected{fleet=\"b\"} 1\ncmdop_relay_clients_connected{fleet=\"a\"} 1\n\
            cmdop_relay_streams_active{kind=\"exec\"} 3\ncmdop_relay_resident_memory_bytes 1048576\n# EOF\n";
        assert_eq!(
            LiveCounts::from_metrics(text),
            LiveCounts {
                agents: 3,
                clients: 1,
                streams: 3,
                memory: 1_048_576
            }
        );
    }
}
