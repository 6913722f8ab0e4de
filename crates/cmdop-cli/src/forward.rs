//! `cmdop connect forward MACHINE [BIND_ADDR:]LOCAL_PORT:HOST:PORT…`: local TCP ports forwarded to
//! destinations reached from the machine, like `ssh -L`.
//!
//! Every accepted connection becomes its own end-to-end stream to the agent, which connects to `HOST:PORT`
//! (if its destination policy allows) and pipes bytes both ways; a failure ends that connection only.
//!
//! `--remote REMOTE_PORT:HOST:PORT` is the other direction, like `ssh -R`: the agent listens on the machine's
//! loopback; each connection there is announced on a control stream, and this side connects to `HOST:PORT`
//! locally and claims the connection with a new stream of its own (the relay only ever routes streams a client
//! opens).
//!
//! A forward outlives a relay restart, as autossh makes ssh's do: when the relay connection is lost the
//! listeners stay, cmdop logs in again with backoff, new connections wait (up to [`CONNECT_WAIT`]) until the
//! machine is reachable again, and remote forwards are set up again. Connections that were cut end. A refusal
//! that retrying cannot fix (a revoked credential) stops it; `--exit-on-loss` stops at the first loss.
//!
//! ```text
//!  ctrl-c ──────────────────────────────────────────────────▶ exit 0
//!  connection lost ──(--exit-on-loss, or a refusal)──────────▶ exit 5 (3 for a refused credential)
//!        └──▶ "reconnecting" ──backoff──▶ login ──▶ "reconnected"; remote forwards listen again
//! ```

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use cmdop_client::{Channel, MachineConnection, reconnect_delay, tunnel};
use cmdop_proto::e2e::{CloseReason, StreamKind};
use cmdop_proto::ops::forward::{TunnelReply, TunnelRequest};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::exit::{Failure, Kind, usage};
use crate::global_args::GlobalArgs;
use crate::reach::{self, bulk_runtime};
use cmdop_proto::display::escaped;

/// Flags of `cmdop connect forward`.
#[derive(Debug, Args)]
pub(crate) struct ForwardArgs {
    /// The machine: its id, hostname, display name, or a unique prefix of one of them.
    machine: String,
    /// `[BIND_ADDR:]LOCAL_PORT:HOST:PORT`: listen on LOCAL_PORT (on 127.0.0.1 unless BIND_ADDR is given; `*`
    /// for all interfaces; `0` picks a free port) and connect each connection to HOST:PORT from the machine.
    /// IPv6 addresses go in brackets.
    #[arg(required_unless_present = "remote", value_name = "SPEC")]
    specs: Vec<String>,
    /// `REMOTE_PORT:HOST:PORT`, like `ssh -R`: listen on the machine's 127.0.0.1:REMOTE_PORT (`0` picks a free
    /// port) and connect each connection to HOST:PORT as reached from here. Repeatable.
    #[arg(long, value_name = "SPEC")]
    remote: Vec<String>,
    /// Stop (exit 5) as soon as the relay connection is lost, instead of logging in again and going on.
    #[arg(long)]
    exit_on_loss: bool,
}

/// How long a connection accepted while the relay or the machine is away waits for them to come back.
const CONNECT_WAIT: Duration = Duration::from_secs(30);
/// How long a remote forward waits to be set up again after a loss: as long as the forward runs.
const REMOTE_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// One parsed remote forward.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RemoteSpec {
    listen_port: u16,
    host: String,
    port: u16,
}

/// One parsed forward.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Spec {
    bind: SocketAddr,
    host: String,
    port: u16,
}

/// Runs `cmdop connect forward` until Ctrl-C.
pub(crate) fn run(
    global: &GlobalArgs,
    workspace: Option<&str>,
    args: ForwardArgs,
) -> Result<ExitCode, Failure> {
    let specs = args
        .specs
        .iter()
        .map(|text| parse_spec(text))
        .collect::<Result<Vec<_>, _>>()?;
    let remotes = args
        .remote
        .iter()
        .map(|text| parse_remote(text))
        .collect::<Result<Vec<_>, _>>()?;
    let runtime = bulk_runtime()?;
    runtime.block_on(async {
        let reach = reach::login(global, workspace, &args.machine).await?;
        let (fatal_tx, fatal_rx) = mpsc::channel::<Failure>(1);
        for remote in remotes {
            let control = start_remote(&reach, &remote, &args.machine, None).await?;
            tokio::spawn(remote_loop(
                control,
                remote,
                args.machine.clone(),
                Arc::clone(&reach),
                fatal_tx.clone(),
                args.exit_on_loss,
            ));
        }
        let mut listeners = Vec::new();
        for spec in &specs {
            listeners.push((listen(spec, &args.machine).await?, spec.clone()));
        }
        let _ = std::io::stdout().flush();
        for (listener, spec) in listeners {
            tokio::spawn(accept_loop(listener, spec, Arc::clone(&reach)));
        }
        run_until_stopped(reach, fatal_rx, args.exit_on_loss).await
    })
}

/// A remote forward's control stream: while it is open, the machine listens.
type Control = (
    cmdop_client::secure_stream::SecureSender,
    cmdop_client::secure_stream::SecureReceiver,
);

/// Asks the machine to listen for a remote forward and says where it listens; with `wait`, waits that long
/// for the relay and the machine to be reachable (setting it up again after a loss).
async fn start_remote(
    reach: &MachineConnection,
    remote: &RemoteSpec,
    machine: &str,
    wait: Option<Duration>,
) -> Result<Control, Failure> {
    let Channel {
        mut sender,
        mut receiver,
        ..
    } = match wait {
        Some(wait) => reach::open_waiting(reach, StreamKind::Tunnel, wait).await?,
        None => reach::open(reach, StreamKind::Tunnel).await?,
    };
    sender
        .send(&TunnelRequest::Listen {
            port: remote.listen_port,
        })
        .await?;
    let port = match receiver.recv::<TunnelReply>().await? {
        Some(TunnelReply::Listening { port }) => port,
        Some(TunnelReply::Refused { message }) => {
            return Err(Failure::new(Kind::General, escaped(&message)));
        }
        _ => {
            return Err(Failure::connection_lost(
                "the machine did not answer the remote forward",
            ));
        }
    };
    println!(
        "remote forwarding 127.0.0.1:{port} on {machine} -> {}:{}",
        display_host(&remote.host),
        remote.port
    );
    let _ = std::io::stdout().flush();
    Ok((sender, receiver))
}

/// Listens for a local forward and says where.
async fn listen(spec: &Spec, machine: &str) -> Result<TcpListener, Failure> {
    let listener = TcpListener::bind(spec.bind).await.map_err(|err| {
        Failure::new(
            Kind::General,
            format!(
                "cannot listen on {}: {err}; pick another LOCAL_PORT (0 picks a free one)",
                spec.bind
            ),
        )
    })?;
    let local = listener.local_addr().map_err(anyhow::Error::from)?;
    // One line per forward on stdout, for people and for scripts that need the port `0` picked.
    println!(
        "forwarding {local} -> {}:{} on {machine}",
        display_host(&spec.host),
        spec.port,
    );
    Ok(listener)
}

/// Serves until Ctrl-C (success), a remote forward fails for good, or the relay connection is lost in a way
/// that logging in again cannot fix (or at all, with `--exit-on-loss`); logs in again after every other loss.
async fn run_until_stopped(
    reach: Arc<MachineConnection>,
    mut fatal: mpsc::Receiver<Failure>,
    exit_on_loss: bool,
) -> Result<ExitCode, Failure> {
    loop {
        let lost = tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                reach.close().await;
                return Ok(ExitCode::SUCCESS);
            }
            lost = reach.closed() => Failure::from(lost),
            Some(failure) = fatal.recv() => return Err(failure),
        };
        if exit_on_loss || !lost.is_retryable() {
            return Err(Failure::new(
                lost.kind(),
                format!(
                    "the connection to the relay was lost, so the forwards stopped ({})",
                    lost.message()
                ),
            ));
        }
        eprintln!(
            "cmdop: the connection to the relay was lost ({}); reconnecting, new connections wait up to {} s",
            lost.message(),
            CONNECT_WAIT.as_secs()
        );
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            reconnected = reconnect(&reach) => reconnected?,
        }
        eprintln!("cmdop: reconnected to the relay; forwarding again");
    }
}

/// Logs in again with backoff until it works or is refused in a way retrying cannot fix.
async fn reconnect(reach: &MachineConnection) -> Result<(), Failure> {
    let mut attempt: u32 = 0;
    loop {
        tokio::time::sleep(reconnect_delay(attempt, &mut rand::rngs::OsRng)).await;
        match reach.reconnect().await {
            Ok(()) => return Ok(()),
            Err(err) if err.is_retryable() => {
                tracing::debug!(%err, attempt, "reconnecting to the relay failed; retrying");
                attempt = attempt.saturating_add(1);
            }
            Err(err) => {
                let failure = Failure::from(err);
                return Err(Failure::new(
                    failure.kind(),
                    format!(
                        "logging in again after the connection was lost failed: {}",
                        failure.message()
                    ),
                ));
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, spec: Spec, reach: Arc<MachineConnection>) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let spec = spec.clone();
                let reach = Arc::clone(&reach);
                tokio::spawn(async move {
                    if let Err(failure) = serve(tcp, &spec, &reach).await {
                        // Per connection: the forward itself goes on.
                        eprintln!(
                            "cmdop: forward {peer} -> {}:{}: {}",
                            display_host(&spec.host),
                            spec.port,
                            failure.message()
                        );
                    }
                });
            }
            Err(err) => {
                // Out of file descriptors and the like: say so, and keep accepting after a breath.
                eprintln!("cmdop: cannot accept on {}: {err}", spec.bind);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve(tcp: TcpStream, spec: &Spec, reach: &MachineConnection) -> Result<(), Failure> {
    let _ = tcp.set_nodelay(true);
    let Channel {
        mut sender,
        mut receiver,
        ..
    } = reach::open_waiting(reach, StreamKind::Tunnel, CONNECT_WAIT).await?;
    sender
        .send(&TunnelRequest::Connect {
            host: spec.host.clone(),
            port: spec.port,
        })
        .await?;
    match receiver.recv::<TunnelReply>().await? {
        Some(TunnelReply::Connected { .. }) => {
            tunnel::pipe(tcp, sender, receiver).await?;
            Ok(())
        }
        Some(TunnelReply::Refused { message }) => {
            Err(Failure::new(Kind::General, escaped(&message)))
        }
        Some(other) => Err(Failure::new(
            Kind::General,
            format!("unexpected answer from the machine: {other:?}"),
        )),
        None => Err(Failure::connection_lost(
            "the machine ended the stream without an answer",
        )),
    }
}

/// Keeps a remote forward's control stream open and claims each connection it announces; when the stream
/// ends (the relay connection was lost, the agent restarted) sets the forward up again, unless `exit_on_loss`.
async fn remote_loop(
    mut control: Control,
    spec: RemoteSpec,
    machine: String,
    reach: Arc<MachineConnection>,
    fatal: mpsc::Sender<Failure>,
    exit_on_loss: bool,
) {
    let failure = loop {
        let why = serve_remote(control, &spec, &reach).await;
        let ended = Failure::new(
            Kind::Unreachable,
            format!(
                "the remote forward to {}:{} ended: {why}",
                display_host(&spec.host),
                spec.port
            ),
        );
        if exit_on_loss {
            break ended;
        }
        // Waits as long as it takes for the relay and the machine; the main loop reports the reconnecting.
        match start_remote(&reach, &spec, &machine, Some(REMOTE_WAIT)).await {
            Ok(again) => control = again,
            Err(failure) => break failure,
        }
    };
    let _ = fatal.send(failure).await;
}

/// Claims each connection the control stream announces until it ends; returns why it ended.
async fn serve_remote(
    control: Control,
    spec: &RemoteSpec,
    reach: &Arc<MachineConnection>,
) -> String {
    // Holding the sending half keeps the control stream, and so the machine's listener, alive.
    let (_sender, mut receiver) = control;
    loop {
        match receiver.recv::<TunnelReply>().await {
            Ok(Some(TunnelReply::Accepted { id, peer })) => {
                let peer = escaped(&peer);
                let spec = spec.clone();
                let reach = Arc::clone(reach);
                tokio::spawn(async move {
                    if let Err(failure) = claim(id, &spec, &reach).await {
                        eprintln!(
                            "cmdop: remote forward {peer} -> {}:{}: {}",
                            display_host(&spec.host),
                            spec.port,
                            failure.message()
                        );
                    }
                });
            }
            Ok(Some(_)) => {}
            Ok(None) => return "the machine stopped it".to_owned(),
            Err(err) => return err.to_string(),
        }
    }
}

/// Connects to the local destination and claims connection `id` with a new stream.
async fn claim(id: u64, spec: &RemoteSpec, reach: &MachineConnection) -> Result<(), Failure> {
    let local = TcpStream::connect((spec.host.as_str(), spec.port)).await;
    let Channel {
        mut sender,
        mut receiver,
        ..
    } = reach::open_waiting(reach, StreamKind::Tunnel, CONNECT_WAIT).await?;
    sender.send(&TunnelRequest::Attach { id }).await?;
    match receiver.recv::<TunnelReply>().await? {
        Some(TunnelReply::Connected { .. }) => {}
        Some(TunnelReply::Refused { message }) => {
            return Err(Failure::new(Kind::General, escaped(&message)));
        }
        _ => {
            return Err(Failure::connection_lost(
                "the machine ended the stream without an answer",
            ));
        }
    }
    match local {
        Ok(tcp) => {
            let _ = tcp.set_nodelay(true);
            tunnel::pipe(tcp, sender, receiver).await?;
            Ok(())
        }
        Err(err) => {
            // Close the machine's side at once rather than leave it waiting.
            let message = format!(
                "cannot connect to {}:{}: {err}",
                display_host(&spec.host),
                spec.port
            );
            sender.close(CloseReason::Internal, &message).await;
            Err(Failure::new(Kind::General, message))
        }
    }
}

/// Parses `REMOTE_PORT:HOST:PORT`.
fn parse_remote(text: &str) -> Result<RemoteSpec, Failure> {
    let bad = |why: &str| {
        usage(format!(
            "invalid --remote {text:?}: {why}; write REMOTE_PORT:HOST:PORT, e.g. 9000:localhost:3000"
        ))
    };
    let fields = split_fields(text).ok_or_else(|| bad("unbalanced brackets"))?;
    let [listen, host, port] = fields.as_slice() else {
        return Err(bad(
            "expected 3 fields separated by `:` (the machine listens on its loopback only)",
        ));
    };
    let listen_port: u16 = listen
        .parse()
        .map_err(|_| bad("REMOTE_PORT must be a number from 0 to 65535"))?;
    let (host, port) = destination(host, port).map_err(bad)?;
    Ok(RemoteSpec {
        listen_port,
        host,
        port,
    })
}

/// The `HOST:PORT` ending of both kinds of spec: a non-empty host (brackets of an IPv6 address removed) and a
/// port from 1 to 65535; the error says which part is wrong.
pub(crate) fn destination(host: &str, port: &str) -> Result<(String, u16), &'static str> {
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or("PORT must be a number from 1 to 65535")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("HOST is empty");
    }
    Ok((host.to_owned(), port))
}

/// Parses `[BIND_ADDR:]LOCAL_PORT:HOST:PORT`, with IPv6 addresses in brackets.
fn parse_spec(text: &str) -> Result<Spec, Failure> {
    let bad = |why: &str| {
        usage(format!(
            "invalid forward {text:?}: {why}; write [BIND_ADDR:]LOCAL_PORT:HOST:PORT, e.g. 8080:localhost:80 or [::1]:5432:db:5432"
        ))
    };
    let fields = split_fields(text).ok_or_else(|| bad("unbalanced brackets"))?;
    let (bind, local, host, port) = match fields.as_slice() {
        [local, host, port] => ("127.0.0.1", *local, *host, *port),
        [bind, local, host, port] => (*bind, *local, *host, *port),
        _ => return Err(bad("expected 3 or 4 fields separated by `:`")),
    };
    let bind: IpAddr = match bind {
        "" | "*" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        other => other
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| bad("BIND_ADDR must be an IP address, `localhost` or `*`"))?,
    };
    let local: u16 = local
        .parse()
        .map_err(|_| bad("LOCAL_PORT must be a number from 0 to 65535"))?;
    let (host, port) = destination(host, port).map_err(bad)?;
    Ok(Spec {
        bind: SocketAddr::new(bind, local),
        host,
        port,
    })
}

/// Splits at `:` outside brackets.
pub(crate) fn split_fields(text: &str) -> Option<Vec<&str>> {
    let mut fields = Vec::new();
    let mut depth = 0u32;
    let mut start = 0;
    for (index, c) in text.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.checked_sub(1)?,
            ':' if depth == 0 => {
                fields.push(text.get(start..index)?);
                start = index + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return None;
    }
    fields.push(text.get(start..)?);
    Some(fields)
}

pub(crate) fn display_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Spec {
        parse_spec(text).unwrap()
    }

    #[test]
    fn specs_parse_like_ssh() {
        assert_eq!(
            spec("8080:localhost:80"),
            Spec {
                bind: "127.0.0.1:8080".parse().unwrap(),
                host: "localhost".into(),
                port: 80
            }
        );
        assert_eq!(spec("0.0.0.0:0:db:5432").bind, "0.0.0.0:0".parse().unwrap());
        assert_eq!(spec("*:9000:db:5432").bind, "0.0.0.0:9000".parse().unwrap());
        let v6 = spec("[::1]:5432:[fd00::5]:5432");
        assert_eq!(v6.bind, "[::1]:5432".parse().unwrap());
        assert_eq!(v6.host, "fd00::5");
        assert_eq!(display_host(&v6.host), "[fd00::5]");
    }

    #[test]
    fn remote_specs_parse() {
        assert_eq!(
            parse_remote("9000:localhost:3000").unwrap(),
            RemoteSpec {
                listen_port: 9000,
                host: "localhost".into(),
                port: 3000
            }
        );
        assert_eq!(parse_remote("0:[::1]:22").unwrap().host, "::1");
        for bad in ["9000:3000", "1.2.3.4:9000:h:1", "x:h:1", "1:h:0", "1::2"] {
            let failure = parse_remote(bad).unwrap_err();
            assert!(failure.message().contains("REMOTE_PORT:HOST:PORT"), "{bad}");
        }
    }

    #[test]
    fn bad_specs_say_what_to_write() {
        for bad in [
            "8080",
            "8080:db",
            "x:db:80",
            "8080:db:0",
            "8080::80",
            "[::1:80:db:80",
            "a:b:c:d:e",
            "host:1:db:2",
        ] {
            let failure = parse_spec(bad).unwrap_err();
            assert!(
                failure.message().contains("LOCAL_PORT:HOST:PORT"),
                "{bad}: {}",
                failure.message()
            );
        }
    }
}
