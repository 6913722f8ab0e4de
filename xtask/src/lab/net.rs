//! The lab's network: four namespaces joined by veth pairs, with nftables for loss and partitions and `tbf`
//! for bandwidth. Everything is named `cmdoplab-…` and torn down when the [`Net`] is dropped, on failure too.
//!
//! ```text
//!  cmdoplab-client  10.77.1.2 ── 10.77.1.1 ┐
//!                                         cmdoplab-router (forwards; runs the UDP forwarder on 10.77.1.1)
//!  cmdoplab-relay   10.77.2.2 ── 10.77.2.1 ┤
//!  cmdoplab-agent   10.77.3.2 ── 10.77.3.1 ┘
//! ```
//!
//! Only addresses inside these namespaces are used; the host's own network is never touched.

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Prefix of every namespace, interface, table and file the lab creates.
pub(crate) const PREFIX: &str = "cmdoplab-";

/// One of the lab's hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Host {
    /// Runs `cmdop` (and the load generators).
    Client,
    /// Routes between the others; runs the forwarder.
    Router,
    /// Runs `cmdop-relay`.
    Relay,
    /// Runs `cmdop-agent` (and the servers forwards reach).
    Agent,
}

impl Host {
    const ALL: [Self; 4] = [Self::Client, Self::Router, Self::Relay, Self::Agent];

    /// The namespace's name.
    pub(crate) fn netns(self) -> &'static str {
        match self {
            Self::Client => "cmdoplab-client",
            Self::Router => "cmdoplab-router",
            Self::Relay => "cmdoplab-relay",
            Self::Agent => "cmdoplab-agent",
        }
    }

    /// The leaf's address (the router has one per link, see [`Link::router_address`]).
    pub(crate) fn address(self) -> &'static str {
        match self {
            Self::Client => "10.77.1.2",
            Self::Router => "10.77.1.1",
            Self::Relay => "10.77.2.2",
            Self::Agent => "10.77.3.2",
        }
    }
}

/// A leaf's link to the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Link {
    /// client ↔ router
    Client,
    /// relay ↔ router
    Relay,
    /// agent ↔ router
    Agent,
}

impl Link {
    const ALL: [Self; 3] = [Self::Client, Self::Relay, Self::Agent];

    fn leaf(self) -> Host {
        match self {
            Self::Client => Host::Client,
            Self::Relay => Host::Relay,
            Self::Agent => Host::Agent,
        }
    }

    /// The interface name on the leaf's side.
    pub(crate) fn leaf_interface(self) -> &'static str {
        match self {
            Self::Client => "cmdoplab-c",
            Self::Relay => "cmdoplab-r",
            Self::Agent => "cmdoplab-a",
        }
    }

    /// The interface name on the router's side.
    pub(crate) fn router_interface(self) -> &'static str {
        match self {
            Self::Client => "cmdoplab-rc",
            Self::Relay => "cmdoplab-rr",
            Self::Agent => "cmdoplab-ra",
        }
    }

    /// The router's address on this link.
    pub(crate) fn router_address(self) -> &'static str {
        match self {
            Self::Client => "10.77.1.1",
            Self::Relay => "10.77.2.1",
            Self::Agent => "10.77.3.1",
        }
    }
}

/// The nftables table in the router: loss and partitions, each in its own chains so that each can be flushed
/// alone. Loss applies to datagrams entering the router from a link and leaving it onto that link.
const RULESET: &str = "table inet cmdoplab {
    chain cut_in { type filter hook prerouting priority -20; policy accept; }
    chain cut_out { type filter hook postrouting priority -20; policy accept; }
    chain loss_in { type filter hook prerouting priority -10; policy accept; }
    chain loss_out { type filter hook postrouting priority -10; policy accept; }
}";

/// Where a running lab records its process id; the namespaces' names are fixed, so two labs on one machine
/// (two engineers, two CI jobs) must take turns.
const LOCK_PATH: &str = "/run/cmdoplab.lock";

/// How long a lab waits for another one to finish before giving up.
const LOCK_WAIT: Duration = Duration::from_secs(45 * 60);

/// The lab's network while it exists.
#[derive(Debug)]
pub(crate) struct Net {
    _lock: Lock,
}

/// The machine-wide lab lock: a file holding the owner's pid, created exclusively, removed on drop. A lock
/// whose process is gone is stale and taken over.
#[derive(Debug)]
struct Lock;

impl Lock {
    fn take() -> Result<Self> {
        let started = Instant::now();
        let mut told = false;
        loop {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(LOCK_PATH)
            {
                Ok(mut file) => {
                    use std::io::Write as _;
                    writeln!(file, "{}", std::process::id())
                        .with_context(|| format!("cannot write {LOCK_PATH}"))?;
                    return Ok(Self);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = fs::read_to_string(LOCK_PATH).unwrap_or_default();
                    let owner = owner.trim();
                    // Alive and still a lab (an xtask): a reused pid does not count.
                    let alive = !owner.is_empty()
                        && fs::read(format!("/proc/{owner}/cmdline"))
                            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("xtask"));
                    if !alive {
                        // Its owner died without cleaning up: the namespaces it left are removed below.
                        let _ = fs::remove_file(LOCK_PATH);
                        continue;
                    }
                    if started.elapsed() > LOCK_WAIT {
                        bail!(
                            "another network lab (pid {owner}) has held {LOCK_PATH} for {LOCK_WAIT:?}; wait for it"
                        );
                    }
                    if !told {
                        println!(
                            "lab: another network lab (pid {owner}) is running; waiting for it to finish"
                        );
                        told = true;
                    }
                    thread::sleep(Duration::from_secs(2));
                }
                Err(e) => return Err(e).with_context(|| format!("cannot create {LOCK_PATH}")),
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = fs::remove_file(LOCK_PATH);
    }
}

impl Net {
    /// Builds the network, first removing what an earlier run that died left behind. `Ok(None)`, with the
    /// reason printed, when this machine cannot have network namespaces (not root, no `ip`, a container
    /// without the capability): the lab is then skipped, not failed.
    pub(crate) fn up() -> Result<Option<Self>> {
        if let Some(why) = cannot_run() {
            println!("lab: skipped: {why}");
            return Ok(None);
        }
        ensure_nft()?;
        let lock = Lock::take()?;
        // Whatever an earlier lab that died left behind; no other lab runs now (we hold the lock).
        teardown();
        let net = Self { _lock: lock };
        for host in Host::ALL {
            ip(&["netns", "add", host.netns()])?;
            in_ns(host, &["ip", "link", "set", "lo", "up"])?;
        }
        for link in Link::ALL {
            let leaf = link.leaf();
            ip(&[
                "link",
                "add",
                link.leaf_interface(),
                "netns",
                leaf.netns(),
                "type",
                "veth",
                "peer",
                "name",
                link.router_interface(),
                "netns",
                Host::Router.netns(),
            ])?;
            let leaf_cidr = format!("{}/24", leaf.address());
            let router_cidr = format!("{}/24", link.router_address());
            in_ns(
                leaf,
                &[
                    "ip",
                    "addr",
                    "add",
                    &leaf_cidr,
                    "dev",
                    link.leaf_interface(),
                ],
            )?;
            in_ns(leaf, &["ip", "link", "set", link.leaf_interface(), "up"])?;
            in_ns(
                leaf,
                &[
                    "ip",
                    "route",
                    "add",
                    "default",
                    "via",
                    link.router_address(),
                ],
            )?;
            // Deleting the client's address (a move to another one) must keep the other, not take it along.
            in_ns(
                leaf,
                &[
                    "sysctl",
                    "-qw",
                    &format!(
                        "net.ipv4.conf.{}.promote_secondaries=1",
                        link.leaf_interface()
                    ),
                ],
            )?;
            in_ns(
                Host::Router,
                &[
                    "ip",
                    "addr",
                    "add",
                    &router_cidr,
                    "dev",
                    link.router_interface(),
                ],
            )?;
            in_ns(
                Host::Router,
                &["ip", "link", "set", link.router_interface(), "up"],
            )?;
        }
        in_ns(Host::Router, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        nft(Host::Router, RULESET)?;
        nft(Host::Relay, N2_RULESET)?;
        Ok(Some(net))
    }

    /// Drops `percent` of the datagrams crossing `link` in each direction (nftables `numgen random`).
    pub(crate) fn set_loss(&self, link: Link, percent: u32) -> Result<()> {
        nft(
            Host::Router,
            "flush chain inet cmdoplab loss_in; flush chain inet cmdoplab loss_out",
        )?;
        if percent > 0 {
            nft(
                Host::Router,
                &format!(
                    "add rule inet cmdoplab loss_in iifname \"{dev}\" numgen random mod 100 < {percent} counter drop\n\
                     add rule inet cmdoplab loss_out oifname \"{dev}\" numgen random mod 100 < {percent} counter drop",
                    dev = link.router_interface()
                ),
            )?;
        }
        Ok(())
    }

    /// Cuts `link` in both directions (`true`) or heals every cut (`false`).
    pub(crate) fn set_cut(&self, link: Link, cut: bool) -> Result<()> {
        if cut {
            nft(
                Host::Router,
                &format!(
                    "add rule inet cmdoplab cut_in iifname \"{dev}\" counter drop\n\
                     add rule inet cmdoplab cut_out oifname \"{dev}\" counter drop",
                    dev = link.router_interface()
                ),
            )
        } else {
            nft(
                Host::Router,
                "flush chain inet cmdoplab cut_in; flush chain inet cmdoplab cut_out",
            )
        }
    }

    /// Datagrams the loss and cut rules dropped so far (the sum of their counters).
    pub(crate) fn dropped_by_rules(&self) -> Result<u64> {
        let listing = capture_ns(Host::Router, &["nft", "list", "table", "inet", "cmdoplab"])?;
        Ok(counter_packets(&listing))
    }

    /// Limits both directions of `link` to `mbit` Mbit/s with a token bucket (`tc … tbf`); 0 removes it.
    pub(crate) fn set_bandwidth(&self, link: Link, mbit: u32) -> Result<()> {
        for (host, dev) in [
            (Host::Router, link.router_interface()),
            (link.leaf(), link.leaf_interface()),
        ] {
            if mbit == 0 {
                let _ = capture_ns(host, &["tc", "qdisc", "del", "dev", dev, "root"]);
            } else {
                in_ns(
                    host,
                    &[
                        "tc",
                        "qdisc",
                        "replace",
                        "dev",
                        dev,
                        "root",
                        "tbf",
                        "rate",
                        &format!("{mbit}mbit"),
                        "burst",
                        "256kb",
                        "latency",
                        "100ms",
                    ],
                )?;
            }
        }
        Ok(())
    }

    /// Moves the client to `new_address` in its subnet: adds it, then removes every other address, so that the
    /// client's next datagram leaves from the new one (catalog item L4).
    pub(crate) fn move_client(&self, new_address: &str) -> Result<()> {
        let dev = Link::Client.leaf_interface();
        in_ns(
            Host::Client,
            &[
                "ip",
                "addr",
                "add",
                &format!("{new_address}/24"),
                "dev",
                dev,
            ],
        )?;
        let listing = capture_ns(
            Host::Client,
            &["ip", "-o", "-4", "addr", "show", "dev", dev],
        )?;
        for old in listing
            .split_whitespace()
            .filter(|w| w.contains('/') && !w.starts_with(&format!("{new_address}/")))
        {
            in_ns(Host::Client, &["ip", "addr", "del", old, "dev", dev])?;
        }
        let router = Link::Client.router_address();
        in_ns(
            Host::Client,
            &["ip", "route", "replace", "default", "via", router],
        )
    }

    /// Adds `count` extra addresses to the client (10.77.1.100 onwards), for load from many sources.
    pub(crate) fn add_client_addresses(&self, count: u8) -> Result<Vec<String>> {
        let mut added = Vec::new();
        for i in 0..count {
            let address = format!("10.77.1.{}", 100 + u16::from(i));
            let cidr = format!("{address}/24");
            in_ns(
                Host::Client,
                &[
                    "ip",
                    "addr",
                    "add",
                    &cidr,
                    "dev",
                    Link::Client.leaf_interface(),
                ],
            )?;
            added.push(address);
        }
        Ok(added)
    }

    /// `ip netns exec NS PROGRAM` for a command to run on `host`.
    pub(crate) fn command(host: Host, program: &Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", host.netns()]).arg(program);
        command
    }

    /// The connections the relay's namespace opened itself so far, towards anything but its own loopback:
    /// their count and their destinations (see [`N2_RULESET`]).
    pub(crate) fn relay_dialled(&self) -> Result<(u64, Vec<String>)> {
        let listing = capture_ns(
            Host::Relay,
            &["nft", "list", "table", "inet", "cmdoplab-n2"],
        )?;
        let destinations = listing
            .split("elements = {")
            .nth(1)
            .and_then(|rest| rest.split('}').next())
            .map(|elements| {
                elements
                    .split(',')
                    .map(|e| e.trim().replace(" . ", ":"))
                    .filter(|e| !e.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        Ok((counter_packets(&listing), destinations))
    }
}

/// In the relay's namespace, loaded before the relay starts so that conntrack follows every flow from its
/// first packet: counts every connection the namespace opens itself (conntrack state `new` on output,
/// loopback excepted) and records where it went. Answers to the clients and agents that dialled in are
/// `established`, never `new`.
const N2_RULESET: &str = "table inet cmdoplab-n2 {
    set dialled { type ipv4_addr . inet_service; flags dynamic; }
    chain out { type filter hook output priority 0; policy accept;
        oifname != \"lo\" ct state new counter
        oifname != \"lo\" ct state new meta l4proto { tcp, udp } update @dialled { ip daddr . th dport }
    }
}";

impl Drop for Net {
    fn drop(&mut self) {
        // Before the lock goes (with the fields, after this).
        teardown();
    }
}

/// Why the lab cannot run here, if it cannot.
fn cannot_run() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some(
            "the network lab needs root (network namespaces, nftables, tc); run it as root".into(),
        );
    }
    let probe = format!("{PREFIX}probe-{}", std::process::id());
    let _ = run_quiet(Command::new("ip").args(["netns", "del", &probe]));
    match run_quiet(Command::new("ip").args(["netns", "add", &probe])) {
        Ok(_) => {
            let _ = run_quiet(Command::new("ip").args(["netns", "del", &probe]));
            None
        }
        Err(e) => Some(format!("cannot create a network namespace here ({e:#})")),
    }
}

/// Installs nftables from Debian's packages when `nft` is missing, as `cargo xtask ci` does for its tools.
fn ensure_nft() -> Result<()> {
    if Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    eprintln!("lab: installing nftables (for loss and partitions)");
    let update = Command::new("apt-get")
        .arg("update")
        .status()
        .context("cannot run apt-get update")?;
    if !update.success() {
        bail!("apt-get update failed; install nftables by hand");
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", "nftables"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("cannot run apt-get install nftables")?;
    if !status.success() {
        bail!("apt-get install nftables failed; install it by hand");
    }
    Ok(())
}

/// Removes every `cmdoplab-` namespace: first the processes still running in it (by their ids, which `ip
/// netns pids` lists; only the lab starts processes there), then the namespace with its interfaces.
pub(crate) fn teardown() {
    let Ok(listing) = run_quiet(Command::new("ip").args(["netns", "list"])) else {
        return;
    };
    let names: Vec<String> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
        .map(str::to_owned)
        .collect();
    for name in &names {
        kill_all_in(name);
    }
    for name in &names {
        let _ = run_quiet(Command::new("ip").args(["netns", "del", name]));
    }
}

/// Stops every process still running in `netns`: TERM, then KILL after 5 s.
pub(crate) fn kill_all_in(netns: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut signal = "TERM";
    loop {
        let pids = run_quiet(Command::new("ip").args(["netns", "pids", netns])).unwrap_or_default();
        let pids: Vec<&str> = pids.split_whitespace().collect();
        if pids.is_empty() {
            return;
        }
        for pid in &pids {
            let _ = run_quiet(Command::new("kill").arg(format!("-{signal}")).arg(pid));
        }
        if Instant::now() > deadline {
            if signal == "KILL" {
                return;
            }
            signal = "KILL";
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// The sum of the packet counts of every `counter packets N bytes M` in an nft listing.
fn counter_packets(listing: &str) -> u64 {
    let words: Vec<&str> = listing.split_whitespace().collect();
    words
        .windows(3)
        .filter(|w| w[0] == "counter" && w[1] == "packets")
        .filter_map(|w| w[2].parse::<u64>().ok())
        .sum()
}

/// Runs `ip ARGS`; a failure names the command and what it printed.
pub(crate) fn ip(args: &[&str]) -> Result<()> {
    run_quiet(Command::new("ip").args(args)).map(|_| ())
}

/// Runs `args` inside `host`'s namespace.
pub(crate) fn in_ns(host: Host, args: &[&str]) -> Result<()> {
    capture_ns(host, args).map(|_| ())
}

/// Runs `args` inside `host`'s namespace and returns its stdout.
pub(crate) fn capture_ns(host: Host, args: &[&str]) -> Result<String> {
    run_quiet(
        Command::new("ip")
            .args(["netns", "exec", host.netns()])
            .args(args),
    )
}

/// Loads an nft script into `host`'s namespace.
fn nft(host: Host, script: &str) -> Result<()> {
    let dir = std::env::temp_dir();
    let path = dir.join(format!("{PREFIX}{}.nft", std::process::id()));
    fs::write(&path, script).with_context(|| format!("cannot write {}", path.display()))?;
    let result = in_ns(host, &["nft", "-f", &path.to_string_lossy()]);
    let _ = fs::remove_file(&path);
    result.with_context(|| format!("nft rejected:\n{script}"))
}

fn run_quiet(command: &mut Command) -> Result<String> {
    let output: Output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {:?}", command.get_program()))?;
    if !output.status.success() {
        bail!(
            "`{}` failed: {}",
            crate::contour::shell_line(command).trim_start_matches("$ "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_nft_counters() {
        let listing = "table inet cmdoplab {\n chain loss_in {\n iifname \"cmdoplab-rc\" numgen random mod 100 < 5 \
            counter packets 12 bytes 3400 drop\n }\n chain loss_out {\n oifname \"cmdoplab-rc\" counter packets 30 \
            bytes 1 drop\n }\n}";
        assert_eq!(counter_packets(listing), 42);
        assert_eq!(counter_packets("table inet cmdoplab { }"), 0);
    }

    #[test]
    fn every_name_is_the_labs() {
        for host in Host::ALL {
            assert!(host.netns().starts_with(PREFIX));
        }
        for link in Link::ALL {
            assert!(link.leaf_interface().starts_with(PREFIX) && link.leaf_interface().len() <= 15);
            assert!(
                link.router_interface().starts_with(PREFIX) && link.router_interface().len() <= 15
            );
        }
    }
}
