//! `cmdop-lab-flood`: the network lab's handshake flood (`cargo xtask lab handshakes`). It opens QUIC
//! connections to a relay from many source addresses and never lets them become useful: either it sends only
//! each connection's first Initial and ignores the answer (half-open handshakes, the slot exhaustion of issue
//! 13 hole 3), or it completes the TLS handshake and then never logs in. It prints one line of figures.
//!
//! ```text
//! cmdop-lab-flood --relay IP:PORT --fingerprint sha256:… --mode initials|handshakes --count N --rate PER_S
//!                 --hold-seconds S [--sources IP,IP,…]
//! ```
//!
//! A test tool only: it runs inside the lab's namespaces, against the lab's relay, for a bounded time.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use cmdop_client::RelayFingerprint;
use cmdop_client::transport::{Limits, SERVER_NAME, client_config};
use quinn_proto::{
    ClientConfig, Connection, ConnectionHandle, DatagramEvent, Endpoint, EndpointConfig, Event,
};

/// The longest the tool runs, whatever it is asked: a flood must end.
const MAX_RUN: Duration = Duration::from_secs(600);

struct Options {
    relay: SocketAddr,
    fingerprint: RelayFingerprint,
    handshakes: bool,
    count: u64,
    rate: u64,
    hold: Duration,
    sources: Vec<IpAddr>,
}

fn parse() -> Result<Options, String> {
    let mut flags = HashMap::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        flags.insert(flag.trim_start_matches("--").to_owned(), value);
    }
    let get = |name: &str| {
        flags
            .get(name)
            .cloned()
            .ok_or(format!("--{name} is required"))
    };
    let number = |name: &str| -> Result<u64, String> {
        get(name)?
            .parse()
            .map_err(|_| format!("--{name} takes a whole number"))
    };
    let sources = match flags.get("sources") {
        Some(list) => list
            .split(',')
            .map(|ip| {
                ip.parse()
                    .map_err(|_| format!("--sources: `{ip}` is not an IP address"))
            })
            .collect::<Result<Vec<IpAddr>, String>>()?,
        None => vec![IpAddr::from([0, 0, 0, 0])],
    };
    Ok(Options {
        relay: get("relay")?
            .parse()
            .map_err(|_| "--relay takes IP:PORT".to_owned())?,
        fingerprint: get("fingerprint")?
            .parse()
            .map_err(|_| "--fingerprint takes the relay's sha256:… fingerprint".to_owned())?,
        handshakes: match get("mode")?.as_str() {
            "initials" => false,
            "handshakes" => true,
            other => return Err(format!("--mode is initials or handshakes, not `{other}`")),
        },
        count: number("count")?,
        rate: number("rate")?.max(1),
        hold: Duration::from_secs(number("hold-seconds")?),
        sources,
    })
}

/// One source address: its socket, its QUIC endpoint and the connections made from it.
struct Source {
    socket: UdpSocket,
    endpoint: Endpoint,
    connections: HashMap<ConnectionHandle, Connection>,
}

#[derive(Default)]
struct Counts {
    started: u64,
    sent_datagrams: u64,
    received_datagrams: u64,
    received_bytes: u64,
    connected: u64,
    lost: u64,
    reasons: HashMap<String, u64>,
}

fn main() {
    let options = match parse() {
        Ok(options) => options,
        Err(why) => {
            eprintln!("cmdop-lab-flood: {why}");
            std::process::exit(2);
        }
    };
    if let Err(why) = flood(&options) {
        eprintln!("cmdop-lab-flood: {why}");
        std::process::exit(1);
    }
}

fn flood(options: &Options) -> Result<(), String> {
    let config: ClientConfig = client_config(
        options.fingerprint,
        Arc::new(Mutex::new(None)),
        &Limits::default(),
    )
    .map_err(|e| e.to_string())?;
    let mut sources = Vec::new();
    for ip in &options.sources {
        let socket = UdpSocket::bind(SocketAddr::new(*ip, 0))
            .map_err(|e| format!("cannot bind {ip}: {e}"))?;
        socket.set_nonblocking(true).map_err(|e| e.to_string())?;
        sources.push(Source {
            socket,
            endpoint: Endpoint::new(Arc::new(EndpointConfig::default()), None, false, None),
            connections: HashMap::new(),
        });
    }
    let mut counts = Counts::default();
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / options.rate as f64);
    let mut buffer = Vec::with_capacity(65_536);
    let mut receive = vec![0u8; 65_536];
    let mut sending_done_at = None;
    loop {
        let now = Instant::now();
        if now.duration_since(started) > MAX_RUN {
            break;
        }
        // Start the connections that are due by now, round robin over the sources.
        while counts.started < options.count
            && started + interval.mul_f64(counts.started as f64) <= now
        {
            let index = usize::try_from(counts.started).unwrap_or(0) % sources.len().max(1);
            let Some(source) = sources.get_mut(index) else {
                break;
            };
            let (handle, mut connection) = source
                .endpoint
                .connect(now, config.clone(), options.relay, SERVER_NAME)
                .map_err(|e| e.to_string())?;
            counts.started += 1;
            send_all(
                source,
                &mut connection,
                now,
                &mut buffer,
                &mut counts,
                options.relay,
            );
            if options.handshakes {
                source.connections.insert(handle, connection);
            }
        }
        if counts.started >= options.count && sending_done_at.is_none() {
            sending_done_at = Some(now);
        }
        if sending_done_at.is_some_and(|done| now.duration_since(done) >= options.hold) {
            break;
        }
        let mut idle = true;
        for source in &mut sources {
            while let Ok((len, from)) = source.socket.recv_from(&mut receive) {
                idle = false;
                counts.received_datagrams += 1;
                counts.received_bytes += len as u64;
                if !options.handshakes {
                    continue;
                }
                let data = BytesMut::from(receive.get(..len).unwrap_or_default());
                buffer.clear();
                match source
                    .endpoint
                    .handle(now, from, None, None, data, &mut buffer)
                {
                    Some(DatagramEvent::ConnectionEvent(handle, event)) => {
                        if let Some(connection) = source.connections.get_mut(&handle) {
                            connection.handle_event(event);
                        }
                    }
                    Some(DatagramEvent::Response(transmit)) => {
                        let _ = source
                            .socket
                            .send_to(buffer.get(..transmit.size).unwrap_or_default(), from);
                    }
                    Some(DatagramEvent::NewConnection(_)) | None => {}
                }
            }
            if options.handshakes {
                drive(source, now, &mut buffer, &mut counts, options.relay);
            }
        }
        if idle {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let open = sources
        .iter()
        .map(|s| s.connections.values().filter(|c| !c.is_closed()).count())
        .sum::<usize>();
    let mut reasons: Vec<String> = counts
        .reasons
        .iter()
        .map(|(r, n)| format!("{n}x {r}"))
        .collect();
    reasons.sort();
    println!(
        "started {} connections ({} datagrams sent) in {:.1} s; the relay answered {} datagrams ({} KiB){}",
        counts.started,
        counts.sent_datagrams,
        sending_done_at.map_or(0.0, |d| d.duration_since(started).as_secs_f64()),
        counts.received_datagrams,
        counts.received_bytes / 1024,
        if options.handshakes {
            format!(
                "; {} handshakes completed and never logged in, {} closed by the relay ({}), {} still open at the end",
                counts.connected,
                counts.lost,
                reasons.join(", "),
                open
            )
        } else {
            String::new()
        }
    );
    Ok(())
}

/// Sends everything `connection` has to send now.
fn send_all(
    source: &Source,
    connection: &mut Connection,
    now: Instant,
    buffer: &mut Vec<u8>,
    counts: &mut Counts,
    relay: SocketAddr,
) {
    loop {
        buffer.clear();
        let Some(transmit) = connection.poll_transmit(now, 1, buffer) else {
            break;
        };
        let _ = source
            .socket
            .send_to(buffer.get(..transmit.size).unwrap_or_default(), relay);
        counts.sent_datagrams += 1;
    }
}

/// Runs every connection of `source`: timers, endpoint events, application events (counted), transmissions.
fn drive(
    source: &mut Source,
    now: Instant,
    buffer: &mut Vec<u8>,
    counts: &mut Counts,
    relay: SocketAddr,
) {
    let handles: Vec<ConnectionHandle> = source.connections.keys().copied().collect();
    for handle in handles {
        let Some(mut connection) = source.connections.remove(&handle) else {
            continue;
        };
        if connection.poll_timeout().is_some_and(|at| at <= now) {
            connection.handle_timeout(now);
        }
        while let Some(event) = connection.poll_endpoint_events() {
            if let Some(back) = source.endpoint.handle_event(handle, event) {
                connection.handle_event(back);
            }
        }
        while let Some(event) = connection.poll() {
            match event {
                Event::Connected => counts.connected += 1,
                Event::ConnectionLost { reason } => {
                    counts.lost += 1;
                    *counts.reasons.entry(reason.to_string()).or_insert(0) += 1;
                }
                _ => {}
            }
        }
        send_all(source, &mut connection, now, buffer, counts, relay);
        if !connection.is_drained() {
            source.connections.insert(handle, connection);
        }
    }
}
