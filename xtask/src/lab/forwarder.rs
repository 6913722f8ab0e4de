//! The lab's user-space UDP forwarder: what `tc netem` would do if this kernel had it. It sits between the
//! CLI and the relay, holds each datagram for a delay (with jitter), and drops, duplicates or reorders some,
//! deciding with a seeded generator so that a run can be repeated, and counts what it did.
//!
//! ```text
//!  client ──▶ LISTEN ──[impair up]──▶ one socket per client address ──▶ relay
//!  client ◀── LISTEN ◀──[impair down]── that socket ◀──────────────────── relay
//! ```
//!
//! It runs as `xtask lab --helper forward …` inside the router namespace. Its impairments come from a JSON
//! control file it re-reads when it changes; its counts go to a JSON stats file twice a second. Writing a new
//! `rebind` number to the control file moves every flow to a fresh upstream socket (a NAT rebinding, as the
//! relay sees it). It stops by itself after `--seconds`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fs;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// Largest datagram carried; QUIC's are far smaller, but path MTU probes can reach the veth MTU.
const MAX_DATAGRAM: usize = 65_535;
/// Most client addresses served at once; a new one beyond is dropped (and counted).
const MAX_FLOWS: usize = 4096;
/// Extra hold of a datagram picked for reordering, so that the ones after it overtake it.
const REORDER_HOLD: Duration = Duration::from_millis(25);
/// Extra hold of a duplicate, so that it arrives as a separate datagram a little later.
const DUPLICATE_HOLD: Duration = Duration::from_millis(1);
/// How often sockets wake up to look at the clock, the control file and the stop flag.
const POLL: Duration = Duration::from_millis(50);

/// Impairments of one direction; all zero means a plain forwarder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Impairment {
    /// Added to every datagram, milliseconds.
    pub(crate) delay_ms: u64,
    /// Uniformly random extra delay in `0..=jitter_ms`.
    pub(crate) jitter_ms: u64,
    /// Per mille of datagrams dropped.
    pub(crate) loss_permille: u64,
    /// Per mille of datagrams sent twice.
    pub(crate) duplicate_permille: u64,
    /// Per mille of datagrams held back so that later ones overtake them.
    pub(crate) reorder_permille: u64,
}

/// The whole control file: both directions and the rebind counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Control {
    /// Client to relay.
    pub(crate) up: Impairment,
    /// Relay to client.
    pub(crate) down: Impairment,
    /// Each increase moves every flow to a new upstream socket.
    pub(crate) rebind: u64,
}

impl Impairment {
    fn to_json(self) -> Value {
        json!({
            "delay_ms": self.delay_ms,
            "jitter_ms": self.jitter_ms,
            "loss_permille": self.loss_permille,
            "duplicate_permille": self.duplicate_permille,
            "reorder_permille": self.reorder_permille,
        })
    }

    fn from_json(value: &Value) -> Self {
        let field = |name: &str| value.get(name).and_then(Value::as_u64).unwrap_or(0);
        Self {
            delay_ms: field("delay_ms"),
            jitter_ms: field("jitter_ms"),
            loss_permille: field("loss_permille").min(1000),
            duplicate_permille: field("duplicate_permille").min(1000),
            reorder_permille: field("reorder_permille").min(1000),
        }
    }
}

impl Control {
    /// Writes the control file the forwarder reads (atomically, so it never sees half a file).
    pub(crate) fn write(&self, path: &Path) -> Result<()> {
        let text = json!({
            "up": self.up.to_json(),
            "down": self.down.to_json(),
            "rebind": self.rebind,
        })
        .to_string();
        let temp = path.with_extension("tmp");
        fs::write(&temp, text).with_context(|| format!("cannot write {}", temp.display()))?;
        fs::rename(&temp, path).with_context(|| format!("cannot replace {}", path.display()))
    }

    fn read(path: &Path) -> Option<Self> {
        let value: Value = serde_json::from_str(&fs::read_to_string(path).ok()?).ok()?;
        Some(Self {
            up: Impairment::from_json(value.get("up")?),
            down: Impairment::from_json(value.get("down")?),
            rebind: value.get("rebind").and_then(Value::as_u64).unwrap_or(0),
        })
    }
}

/// xorshift64*: small, fast, and the same sequence for the same seed on every machine.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        // splitmix64 of the seed, so that seeds 0, 1, 2 … start far apart (and never at the fixed point 0).
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Self((z ^ (z >> 31)) | 1)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`0` when `n` is 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

/// What the forwarder decided for one datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Not sent.
    Dropped,
    /// Sent after these holds (two for a duplicate).
    Sent(Vec<Duration>),
}

/// Decides the fate of the next datagram of a direction. Pure: the same generator state and impairment give
/// the same fate, which is what makes a run repeatable under a seed.
pub(crate) fn decide(rng: &mut Rng, impairment: &Impairment) -> Fate {
    // Draw every number every time, so that changing one probability does not shift the others' sequence.
    let loss = rng.below(1000);
    let duplicate = rng.below(1000);
    let reorder = rng.below(1000);
    let jitter = rng.below(impairment.jitter_ms + 1);
    if loss < impairment.loss_permille {
        return Fate::Dropped;
    }
    let mut hold = Duration::from_millis(impairment.delay_ms + jitter);
    if reorder < impairment.reorder_permille {
        hold += REORDER_HOLD;
    }
    if duplicate < impairment.duplicate_permille {
        Fate::Sent(vec![hold, hold + DUPLICATE_HOLD])
    } else {
        Fate::Sent(vec![hold])
    }
}

/// Counts of one direction, as written to the stats file.
#[derive(Debug, Default)]
struct Counts {
    received: AtomicU64,
    passed: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
    /// Sends the kernel refused: nftables dropping the datagram on its way out of the router (EPERM).
    refused: AtomicU64,
    bytes: AtomicU64,
}

impl Counts {
    fn to_json(&self) -> Value {
        json!({
            "received": self.received.load(Ordering::Relaxed),
            "passed": self.passed.load(Ordering::Relaxed),
            "dropped": self.dropped.load(Ordering::Relaxed),
            "duplicated": self.duplicated.load(Ordering::Relaxed),
            "reordered": self.reordered.load(Ordering::Relaxed),
            "refused": self.refused.load(Ordering::Relaxed),
            "bytes": self.bytes.load(Ordering::Relaxed),
        })
    }
}

/// A datagram waiting for its time.
#[derive(Debug)]
struct Held {
    due: Instant,
    /// Arrival number in its direction; a delivery below the highest delivered so far is a reordering.
    arrival: u64,
    duplicate: bool,
    bytes: Vec<u8>,
    socket: Arc<UdpSocket>,
    to: SocketAddr,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.arrival, self.duplicate) == (other.due, other.arrival, other.duplicate)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.arrival, self.duplicate).cmp(&(other.due, other.arrival, other.duplicate))
    }
}

/// One direction: its impairment decisions, its delay line and its counts.
#[derive(Debug)]
struct Direction {
    rng: Mutex<Rng>,
    arrivals: AtomicU64,
    queue: Sender<Held>,
    counts: Arc<Counts>,
}

impl Direction {
    /// Starts the delay line's sender thread and returns the direction.
    fn start(seed: u64, stop: Arc<AtomicBool>) -> Self {
        let (queue, held) = mpsc::channel();
        let counts = Arc::new(Counts::default());
        let sender_counts = Arc::clone(&counts);
        thread::spawn(move || deliver(&held, &sender_counts, &stop));
        Self {
            rng: Mutex::new(Rng::new(seed)),
            arrivals: AtomicU64::new(0),
            queue,
            counts,
        }
    }

    /// Decides the fate of `bytes` and queues its copies for `socket` to send to `to`.
    fn forward(
        &self,
        impairment: &Impairment,
        bytes: &[u8],
        socket: &Arc<UdpSocket>,
        to: SocketAddr,
    ) {
        let arrival = self.arrivals.fetch_add(1, Ordering::Relaxed);
        self.counts.received.fetch_add(1, Ordering::Relaxed);
        let fate = match self.rng.lock() {
            Ok(mut rng) => decide(&mut rng, impairment),
            Err(_) => Fate::Dropped,
        };
        let Fate::Sent(holds) = fate else {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let now = Instant::now();
        for (copy, hold) in holds.iter().enumerate() {
            let held = Held {
                due: now + *hold,
                arrival,
                duplicate: copy > 0,
                bytes: bytes.to_vec(),
                socket: Arc::clone(socket),
                to,
            };
            if copy > 0 {
                self.counts.duplicated.fetch_add(1, Ordering::Relaxed);
            }
            let _ = self.queue.send(held);
        }
    }
}

/// The delay line: sends each held datagram at its time, counting reorderings.
fn deliver(incoming: &Receiver<Held>, counts: &Counts, stop: &AtomicBool) {
    let mut heap: BinaryHeap<Reverse<Held>> = BinaryHeap::new();
    let mut highest_delivered: Option<u64> = None;
    while !stop.load(Ordering::Relaxed) {
        let wait = heap.peek().map_or(POLL, |Reverse(next)| {
            next.due.saturating_duration_since(Instant::now()).min(POLL)
        });
        match incoming.recv_timeout(wait) {
            Ok(held) => heap.push(Reverse(held)),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while let Ok(held) = incoming.try_recv() {
            heap.push(Reverse(held));
        }
        let now = Instant::now();
        while heap.peek().is_some_and(|Reverse(next)| next.due <= now) {
            let Some(Reverse(held)) = heap.pop() else {
                break;
            };
            if !held.duplicate {
                if highest_delivered.is_some_and(|highest| held.arrival < highest) {
                    counts.reordered.fetch_add(1, Ordering::Relaxed);
                }
                highest_delivered = highest_delivered.max(Some(held.arrival));
            }
            if held.socket.send_to(&held.bytes, held.to).is_ok() {
                counts.passed.fetch_add(1, Ordering::Relaxed);
                counts
                    .bytes
                    .fetch_add(held.bytes.len() as u64, Ordering::Relaxed);
            } else {
                counts.refused.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One client address and the upstream socket that stands for it towards the relay.
#[derive(Debug)]
struct Flow {
    upstream: Mutex<Arc<UdpSocket>>,
}

/// The forwarder's command line: `--listen A --to B --upstream-bind IP --control F --stats F --seed N
/// --seconds N`.
#[derive(Debug)]
struct Options {
    listen: SocketAddr,
    to: SocketAddr,
    upstream_bind: SocketAddr,
    control: PathBuf,
    stats: PathBuf,
    seed: u64,
    seconds: u64,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut map = HashMap::new();
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("forwarder flag {flag} needs a value"))?;
        map.insert(flag.trim_start_matches("--").to_owned(), value.clone());
    }
    let get = |name: &str| {
        map.get(name)
            .cloned()
            .with_context(|| format!("the forwarder needs --{name}"))
    };
    Ok(Options {
        listen: get("listen")?.parse().context("--listen takes IP:PORT")?,
        to: get("to")?.parse().context("--to takes IP:PORT")?,
        upstream_bind: format!("{}:0", get("upstream-bind")?)
            .parse()
            .context("--upstream-bind takes an IP address")?,
        control: get("control")?.into(),
        stats: get("stats")?.into(),
        seed: get("seed")?.parse().context("--seed takes a number")?,
        seconds: get("seconds")?
            .parse()
            .context("--seconds takes a number")?,
    })
}

/// Runs the forwarder (`xtask lab --helper forward ARGS`) until `--seconds` pass.
pub(crate) fn run(args: &[String]) -> Result<()> {
    let options = parse(args)?;
    let listen = Arc::new(
        UdpSocket::bind(options.listen)
            .with_context(|| format!("cannot listen on {}", options.listen))?,
    );
    listen.set_read_timeout(Some(POLL))?;
    let stop = Arc::new(AtomicBool::new(false));
    let up = Arc::new(Direction::start(options.seed, Arc::clone(&stop)));
    let down = Arc::new(Direction::start(
        options.seed ^ 0xd0d0_d0d0,
        Arc::clone(&stop),
    ));
    let control = Arc::new(Mutex::new(
        Control::read(&options.control).unwrap_or_default(),
    ));
    let flows: Arc<Mutex<HashMap<SocketAddr, Arc<Flow>>>> = Arc::default();
    let refused_flows = AtomicU64::new(0);
    let rebinds = AtomicU64::new(0);
    let deadline = Instant::now() + Duration::from_secs(options.seconds);
    let mut control_seen: Option<SystemTime> = None;
    let mut last_stats = Instant::now();
    let mut buffer = vec![0u8; MAX_DATAGRAM];
    println!("forwarding {} -> {}", options.listen, options.to);
    while Instant::now() < deadline {
        // The control file: new impairments, and a rebind when its counter grows.
        let modified = fs::metadata(&options.control)
            .and_then(|m| m.modified())
            .ok();
        if modified != control_seen {
            control_seen = modified;
            if let Some(new) = Control::read(&options.control) {
                let old_rebind = control.lock().map(|c| c.rebind).unwrap_or(0);
                if new.rebind > old_rebind {
                    rebind(&flows, &options, &down, &listen, &control, &stop)?;
                    rebinds.fetch_add(1, Ordering::Relaxed);
                }
                if let Ok(mut current) = control.lock() {
                    *current = new;
                }
            }
        }
        if last_stats.elapsed() >= Duration::from_millis(500) {
            last_stats = Instant::now();
            write_stats(&options.stats, &up, &down, &flows, &refused_flows, &rebinds);
        }
        let (len, from) = match listen.recv_from(&mut buffer) {
            Ok(got) => got,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => return Err(e).context("the forwarder's socket failed"),
        };
        let flow = {
            let mut table = flows
                .lock()
                .map_err(|_| anyhow::anyhow!("flow table poisoned"))?;
            match table.get(&from) {
                Some(flow) => Arc::clone(flow),
                None if table.len() >= MAX_FLOWS => {
                    refused_flows.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                None => {
                    let socket = upstream_socket(&options)?;
                    let flow = Arc::new(Flow {
                        upstream: Mutex::new(Arc::clone(&socket)),
                    });
                    start_down(socket, from, &down, &listen, &control, &stop);
                    table.insert(from, Arc::clone(&flow));
                    flow
                }
            }
        };
        let impairment = control.lock().map(|c| c.up).unwrap_or_default();
        let socket = flow
            .upstream
            .lock()
            .map(|s| Arc::clone(&s))
            .map_err(|_| anyhow::anyhow!("flow poisoned"))?;
        up.forward(
            &impairment,
            buffer.get(..len).unwrap_or_default(),
            &socket,
            options.to,
        );
    }
    stop.store(true, Ordering::Relaxed);
    write_stats(&options.stats, &up, &down, &flows, &refused_flows, &rebinds);
    Ok(())
}

fn upstream_socket(options: &Options) -> Result<Arc<UdpSocket>> {
    let socket = UdpSocket::bind(options.upstream_bind).with_context(|| {
        format!(
            "cannot bind an upstream socket on {}",
            options.upstream_bind
        )
    })?;
    socket.set_read_timeout(Some(POLL))?;
    Ok(Arc::new(socket))
}

/// Relays what the relay sends on `socket` back to `client`, until the socket is replaced or the run stops.
fn start_down(
    socket: Arc<UdpSocket>,
    client: SocketAddr,
    down: &Arc<Direction>,
    listen: &Arc<UdpSocket>,
    control: &Arc<Mutex<Control>>,
    stop: &Arc<AtomicBool>,
) {
    let (down, listen, control, stop) = (
        Arc::clone(down),
        Arc::clone(listen),
        Arc::clone(control),
        Arc::clone(stop),
    );
    thread::spawn(move || {
        let mut buffer = vec![0u8; MAX_DATAGRAM];
        // A replaced socket's thread ends once it is the only holder left besides this thread.
        while !stop.load(Ordering::Relaxed) && Arc::strong_count(&socket) > 1 {
            match socket.recv_from(&mut buffer) {
                Ok((len, _)) => {
                    let impairment = control.lock().map(|c| c.down).unwrap_or_default();
                    down.forward(
                        &impairment,
                        buffer.get(..len).unwrap_or_default(),
                        &listen,
                        client,
                    );
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return,
            }
        }
    });
}

/// Gives every flow a fresh upstream socket: the relay sees each client arrive from a new port.
fn rebind(
    flows: &Mutex<HashMap<SocketAddr, Arc<Flow>>>,
    options: &Options,
    down: &Arc<Direction>,
    listen: &Arc<UdpSocket>,
    control: &Arc<Mutex<Control>>,
    stop: &Arc<AtomicBool>,
) -> Result<()> {
    let table = flows
        .lock()
        .map_err(|_| anyhow::anyhow!("flow table poisoned"))?;
    for (client, flow) in table.iter() {
        let socket = upstream_socket(options)?;
        start_down(Arc::clone(&socket), *client, down, listen, control, stop);
        let Ok(mut upstream) = flow.upstream.lock() else {
            bail!("flow poisoned")
        };
        *upstream = socket;
    }
    Ok(())
}

fn write_stats(
    path: &Path,
    up: &Direction,
    down: &Direction,
    flows: &Mutex<HashMap<SocketAddr, Arc<Flow>>>,
    refused_flows: &AtomicU64,
    rebinds: &AtomicU64,
) {
    let stats = json!({
        "up": up.counts.to_json(),
        "down": down.counts.to_json(),
        "flows": flows.lock().map(|f| f.len()).unwrap_or(0),
        "refused_flows": refused_flows.load(Ordering::Relaxed),
        "rebinds": rebinds.load(Ordering::Relaxed),
    });
    let temp = path.with_extension("tmp");
    if fs::write(&temp, stats.to_string()).is_ok() {
        let _ = fs::rename(&temp, path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fates(seed: u64, impairment: &Impairment, n: usize) -> Vec<Fate> {
        let mut rng = Rng::new(seed);
        (0..n).map(|_| decide(&mut rng, impairment)).collect()
    }

    #[test]
    fn the_same_seed_decides_the_same_fates() {
        let lossy = Impairment {
            delay_ms: 100,
            jitter_ms: 10,
            loss_permille: 50,
            duplicate_permille: 10,
            reorder_permille: 10,
        };
        assert_eq!(fates(7, &lossy, 1000), fates(7, &lossy, 1000));
        assert_ne!(fates(7, &lossy, 1000), fates(8, &lossy, 1000));
    }

    #[test]
    fn rates_come_out_near_what_was_asked() {
        let impairment = Impairment {
            delay_ms: 100,
            jitter_ms: 10,
            loss_permille: 50,
            duplicate_permille: 10,
            reorder_permille: 0,
        };
        let all = fates(1, &impairment, 100_000);
        let dropped = all.iter().filter(|f| **f == Fate::Dropped).count();
        let doubled = all
            .iter()
            .filter(|f| matches!(f, Fate::Sent(holds) if holds.len() == 2))
            .count();
        assert!((4_500..5_500).contains(&dropped), "{dropped} dropped");
        assert!((800..1_200).contains(&doubled), "{doubled} duplicated");
        for fate in &all {
            if let Fate::Sent(holds) = fate {
                assert!(
                    holds[0] >= Duration::from_millis(100)
                        && holds[0] <= Duration::from_millis(110)
                );
            }
        }
    }

    #[test]
    fn no_impairment_passes_everything_at_once() {
        let all = fates(3, &Impairment::default(), 1000);
        assert!(all.iter().all(|f| *f == Fate::Sent(vec![Duration::ZERO])));
    }

    #[test]
    fn forwards_counts_and_rebinds_on_loopback() {
        let dir =
            std::env::temp_dir().join(format!("cmdoplab-forwarder-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
        echo.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let echo_addr = echo.local_addr().unwrap();
        // A free port for the forwarder: bind, read it, release it.
        let listen = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let control = dir.join("control.json");
        let stats = dir.join("stats.json");
        Control::default().write(&control).unwrap();
        let args: Vec<String> = [
            "--listen",
            &listen.to_string(),
            "--to",
            &echo_addr.to_string(),
            "--upstream-bind",
            "127.0.0.1",
            "--control",
            control.to_str().unwrap(),
            "--stats",
            stats.to_str().unwrap(),
            "--seed",
            "1",
            "--seconds",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let forwarder = thread::spawn(move || run(&args));
        thread::sleep(Duration::from_millis(200));
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 64];
        let mut sources = Vec::new();
        for round in 0..2u8 {
            client.send_to(&[round], listen).unwrap();
            let (n, from) = echo.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &[round]);
            sources.push(from);
            echo.send_to(b"back", from).unwrap();
            let (n, _) = client.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"back");
            Control {
                rebind: 1,
                ..Control::default()
            }
            .write(&control)
            .unwrap();
            thread::sleep(Duration::from_millis(300));
        }
        assert_ne!(
            sources[0], sources[1],
            "a rebind must change the upstream port"
        );
        forwarder.join().unwrap().unwrap();
        let stats: Value = serde_json::from_str(&fs::read_to_string(&stats).unwrap()).unwrap();
        assert_eq!(stats["up"]["passed"], 2);
        assert_eq!(stats["down"]["passed"], 2);
        assert_eq!(stats["rebinds"], 1);
        let _ = fs::remove_dir_all(&dir);
    }
}
