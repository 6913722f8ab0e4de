//! Tunnel streams on the agent: connect to the destination a client asked for, if the destination policy
//! allows it, and pipe bytes until both directions end.
//!
//! The name is resolved once, here; each resolved address is canonicalised and checked, and the connection
//! goes to the checked address, never to a second resolution of the name.
//!
//! Remote forwards (`ssh -R` style): a control stream makes the agent listen on its loopback; each accepted
//! connection waits in [`PendingConnections`] under a random id until a stream from the same client key claims
//! it, or is closed after [`CLAIM_TIMEOUT`].

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cmdop_client::secure_stream::{SecureReceiver, SecureSender, SecureStreamError};
use cmdop_client::tunnel;
use cmdop_identity::PublicKey;
use cmdop_proto::ops::forward::{TunnelReply, TunnelRequest};
use tokio::net::{TcpListener, TcpStream};

use crate::destination_policy::{DestinationPolicy, Verdict};

/// How long resolving the destination and connecting to it may take, together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an accepted remote-forward connection waits for the client to claim it.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(10);

/// How often an idle remote-forward control stream says it is alive (the relay drops streams idle for 10 min).
const KEEP_ALIVE: Duration = Duration::from_secs(60);

/// Why a forward's destination could not be reached; the message is the refusal the client shows.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    /// The request named no host.
    #[error("no destination host given")]
    NoHost,
    /// The name did not resolve.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    /// The name resolved to nothing.
    #[error("{host} resolved to no address")]
    NoAddress { host: String },
    /// The destination policy refused every resolved address; this is the first one's refusal.
    #[error("{host}:{port} ({address}) is not an allowed destination: {rule}")]
    NotAllowed {
        host: String,
        port: u16,
        address: IpAddr,
        rule: &'static str,
    },
    /// An allowed address did not answer; this is the first such failure.
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: SocketAddr,
        source: std::io::Error,
    },
    /// Resolving and connecting together took longer than [`CONNECT_TIMEOUT`].
    #[error("connecting to {host}:{port} took longer than {} s", CONNECT_TIMEOUT.as_secs())]
    TimedOut { host: String, port: u16 },
}

/// Connections accepted by remote forwards, waiting to be claimed.
#[derive(Debug, Default)]
pub struct PendingConnections {
    waiting: Mutex<HashMap<u64, Pending>>,
}

#[derive(Debug)]
struct Pending {
    tcp: TcpStream,
    owner: PublicKey,
    peer: SocketAddr,
}

impl PendingConnections {
    fn insert(&self, id: u64, pending: Pending) {
        self.lock().insert(id, pending);
    }

    /// Takes the connection `id` if `client` owns it.
    fn claim(&self, id: u64, client: &PublicKey) -> Option<Pending> {
        let mut waiting = self.lock();
        if waiting.get(&id).is_some_and(|p| p.owner == *client) {
            waiting.remove(&id)
        } else {
            None
        }
    }

    fn expire(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Serves one tunnel stream from the client with key `client`.
pub async fn serve(
    mut sender: SecureSender,
    mut receiver: SecureReceiver,
    policy: &DestinationPolicy,
    pending: &Arc<PendingConnections>,
    client: PublicKey,
) -> Result<(), SecureStreamError> {
    let (host, port) = match receiver.recv::<TunnelRequest>().await? {
        Some(TunnelRequest::Connect { host, port }) => (host, port),
        Some(TunnelRequest::Listen { port }) => {
            return listen(sender, receiver, port, pending, client).await;
        }
        Some(TunnelRequest::Attach { id }) => {
            let Some(claimed) = pending.claim(id, &client) else {
                let message =
                    "no such connection waiting (it was claimed, expired, or is not yours)";
                sender
                    .send(&TunnelReply::Refused {
                        message: message.to_owned(),
                    })
                    .await?;
                return sender.end(1).await;
            };
            sender
                .send(&TunnelReply::Connected {
                    address: claimed.peer.to_string(),
                })
                .await?;
            tunnel::pipe(claimed.tcp, sender, receiver).await?;
            return Ok(());
        }
        None => return Ok(()),
    };
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, connect(&host, port, policy))
        .await
        .unwrap_or_else(|_| {
            Err(ConnectError::TimedOut {
                host: host.clone(),
                port,
            })
        });
    match connected {
        Err(err) => {
            let message = err.to_string();
            tracing::info!(%host, port, %message, "forward refused");
            sender.send(&TunnelReply::Refused { message }).await?;
            sender.end(1).await
        }
        Ok((tcp, address)) => {
            tracing::info!(%host, port, %address, "forward connected");
            sender
                .send(&TunnelReply::Connected {
                    address: address.to_string(),
                })
                .await?;
            let totals = tunnel::pipe(tcp, sender, receiver).await?;
            tracing::debug!(%address, sent = totals.sent, received = totals.received, "forward ended");
            Ok(())
        }
    }
}

/// Resolves `host` once and connects to the first address the policy allows that answers.
async fn connect(
    host: &str,
    port: u16,
    policy: &DestinationPolicy,
) -> Result<(TcpStream, SocketAddr), ConnectError> {
    // `[::1]` is how people write IPv6 next to a port; the resolver wants it bare.
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if bare.is_empty() {
        return Err(ConnectError::NoHost);
    }
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|source| ConnectError::Resolve {
            host: bare.to_owned(),
            source,
        })?
        .collect();
    let mut refusal = None;
    let mut failure = None;
    for candidate in resolved {
        match policy.check(candidate) {
            Verdict::Refused(rule) => {
                refusal.get_or_insert_with(|| ConnectError::NotAllowed {
                    host: bare.to_owned(),
                    port,
                    address: candidate.ip(),
                    rule,
                });
            }
            Verdict::Allowed(address) => match TcpStream::connect(address).await {
                Ok(tcp) => {
                    // Interactive protocols (ssh, redis) need their small writes out at once; bulk reads are
                    // a frame's worth each anyway.
                    let _ = tcp.set_nodelay(true);
                    return Ok((tcp, address));
                }
                Err(err) => {
                    failure.get_or_insert(ConnectError::Connect {
                        address,
                        source: err,
                    });
                }
            },
        }
    }
    Err(failure
        .or(refusal)
        .unwrap_or_else(|| ConnectError::NoAddress {
            host: bare.to_owned(),
        }))
}

/// The control stream of a remote forward: listen on the machine's loopback and announce each connection.
async fn listen(
    mut sender: SecureSender,
    mut receiver: SecureReceiver,
    port: u16,
    pending: &Arc<PendingConnections>,
    client: PublicKey,
) -> Result<(), SecureStreamError> {
    let listener = match TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await {
        Ok(listener) => listener,
        Err(err) => {
            let message = format!("cannot listen on 127.0.0.1:{port} on the machine: {err}");
            sender.send(&TunnelReply::Refused { message }).await?;
            return sender.end(1).await;
        }
    };
    let bound = listener.local_addr().map_or(port, |a| a.port());
    sender.send(&TunnelReply::Listening { port: bound }).await?;
    tracing::info!(port = bound, "remote forward listening");
    // The client ends (or loses) the control stream to stop the forward; nothing else comes on it.
    let mut client_gone =
        tokio::spawn(
            async move { while let Ok(Some(_)) = receiver.recv::<TunnelRequest>().await {} },
        );
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
    keep_alive.tick().await;
    loop {
        tokio::select! {
            _ = &mut client_gone => break,
            _ = keep_alive.tick() => sender.send(&TunnelReply::KeepAlive).await?,
            accepted = listener.accept() => {
                let Ok((tcp, peer)) = accepted else { continue };
                let _ = tcp.set_nodelay(true);
                let id = rand::random::<u64>();
                pending.insert(id, Pending { tcp, owner: client, peer });
                let expiry = Arc::clone(pending);
                tokio::spawn(async move {
                    tokio::time::sleep(CLAIM_TIMEOUT).await;
                    expiry.expire(id);
                });
                sender
                    .send(&TunnelReply::Accepted { id, peer: peer.to_string() })
                    .await?;
            }
        }
    }
    tracing::info!(port = bound, "remote forward stopped");
    sender.end(0).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set in the child process that runs inside its own network and mount namespaces.
    const IN_NAMESPACE: &str = "CMDOP_TEST_IN_NETNS";
    /// A "public" address (TEST-NET-3) the operator allowed, and a private one they denied; both live on the
    /// namespace's loopback so that connections to them are real and stay inside the namespace.
    const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
    const PRIVATE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);

    /// DNS rebinding (catalog item N1): `rebind.test` resolves to an allowed public address on the first
    /// query and to a denied private one on every later query (TTL 0). A resolver that checked one answer
    /// and connected to another would reach the private address. The agent's resolver is the system's
    /// (glibc, /etc/resolv.conf), pointed at a responder on the namespace's loopback: real lookups, real
    /// connections, nothing leaves the namespace.
    #[test]
    fn a_name_rebinding_from_public_to_private_never_reaches_the_private_address() {
        if std::env::var_os(IN_NAMESPACE).is_some() {
            inside_namespace();
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let output = std::process::Command::new("unshare")
            .args(["--net", "--mount", "--"])
            .arg(exe)
            .args([
                "forward::tests::a_name_rebinding_from_public_to_private_never_reaches_the_private_address",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(IN_NAMESPACE, "1")
            .output()
            .expect("run unshare (util-linux) to get a private network namespace; this test needs root");
        assert!(
            output.status.success(),
            "the test inside its namespace failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("1 passed"),
            "the namespaced run did not run the test: {}",
            String::from_utf8_lossy(&output.stdout)
        );
    }

    fn sh(program: &str, args: &[&str]) {
        let status = std::process::Command::new(program)
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "{program} {args:?} failed");
    }

    fn inside_namespace() {
        sh("ip", &["link", "set", "lo", "up"]);
        for address in [PUBLIC, PRIVATE] {
            sh(
                "ip",
                &["addr", "add", &format!("{address}/32"), "dev", "lo"],
            );
        }
        // The mount namespace is private: this bind mount is seen by this process alone.
        let dir = tempfile::tempdir().unwrap();
        let resolv = dir.path().join("resolv.conf");
        std::fs::write(
            &resolv,
            "nameserver 127.0.0.1\noptions attempts:1 timeout:2\n",
        )
        .unwrap();
        sh(
            "mount",
            &["--bind", resolv.to_str().unwrap(), "/etc/resolv.conf"],
        );
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(rebinding());
    }

    async fn rebinding() {
        let dns = tokio::net::UdpSocket::bind("127.0.0.1:53").await.unwrap();
        let answered = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(answer_queries(dns, Arc::clone(&answered)));
        let public = TcpListener::bind((PUBLIC, 0)).await.unwrap();
        let port = public.local_addr().unwrap().port();
        let private = TcpListener::bind((PRIVATE, port)).await.unwrap();
        let policy =
            DestinationPolicy::from_lists(&["10.0.0.0/8".to_owned()], &[format!("{PUBLIC}/32")])
                .unwrap();

        // First forward: the name is public, allowed, and the connection goes exactly there.
        let (tcp, address) = connect("rebind.test", port, &policy).await.unwrap();
        assert_eq!(address, SocketAddr::from((PUBLIC, port)));
        assert_eq!(tcp.peer_addr().unwrap(), address);
        let (_accepted, from) = public.accept().await.unwrap();
        assert_eq!(from, tcp.local_addr().unwrap());

        // Second forward: the name now points at the denied private address, and is refused naming it.
        let refused = connect("rebind.test", port, &policy).await.unwrap_err();
        assert!(
            matches!(refused, ConnectError::NotAllowed { address, .. } if address == IpAddr::V4(PRIVATE)),
            "{refused}"
        );

        // The private address was never connected to, and each forward resolved the name once: the
        // responder handed out the public answer exactly once.
        let reached = tokio::time::timeout(Duration::from_millis(300), private.accept()).await;
        assert!(
            reached.is_err(),
            "the private address was reached: {reached:?}"
        );
        let answers = answered.lock().unwrap().clone();
        assert_eq!(
            answers.iter().filter(|a| **a == PUBLIC).count(),
            1,
            "{answers:?}"
        );
        assert!(answers.contains(&PRIVATE), "{answers:?}");
    }

    /// A DNS responder for `rebind.test`: A queries get [`PUBLIC`] the first time and [`PRIVATE`] after,
    /// with TTL 0; AAAA queries get no records. Every A answer given is recorded.
    async fn answer_queries(socket: tokio::net::UdpSocket, answered: Arc<Mutex<Vec<Ipv4Addr>>>) {
        let mut buf = [0u8; 512];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let Some(query) = buf.get(..n) else { continue };
            let Some((question_end, qtype)) = question(query) else {
                continue;
            };
            let mut reply = Vec::with_capacity(64);
            reply.extend_from_slice(&query[..2]); // id
            reply.extend_from_slice(&[0x81, 0x80]); // response, recursion desired and available, no error
            reply.extend_from_slice(&[0, 1]); // one question
            let address = (qtype == 1).then(|| {
                let mut answered = answered.lock().unwrap();
                let address = if answered.is_empty() { PUBLIC } else { PRIVATE };
                answered.push(address);
                address
            });
            reply.extend_from_slice(&[0, u8::from(address.is_some()), 0, 0, 0, 0]);
            reply.extend_from_slice(&query[12..question_end]);
            if let Some(address) = address {
                // Name by pointer to the question, type A, class IN, TTL 0, four bytes of address.
                reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
                reply.extend_from_slice(&address.octets());
            }
            let _ = socket.send_to(&reply, from).await;
        }
    }

    /// The end of the question section of a query and its type.
    fn question(query: &[u8]) -> Option<(usize, u16)> {
        let mut at = 12;
        loop {
            let len = usize::from(*query.get(at)?);
            at += 1;
            if len == 0 {
                break;
            }
            at += len;
        }
        let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
        Some((at + 4, qtype))
    }

    #[test]
    fn refusals_read_as_they_always_have() {
        let io = || std::io::Error::from_raw_os_error(111);
        let address: SocketAddr = "10.0.0.1:22".parse().unwrap();
        let cases = [
            (ConnectError::NoHost, "no destination host given".to_owned()),
            (
                ConnectError::Resolve {
                    host: "db".into(),
                    source: io(),
                },
                format!("cannot resolve db: {}", io()),
            ),
            (
                ConnectError::NoAddress { host: "db".into() },
                "db resolved to no address".to_owned(),
            ),
            (
                ConnectError::NotAllowed {
                    host: "metadata".into(),
                    port: 80,
                    address: "169.254.169.254".parse().unwrap(),
                    rule: "link-local addresses are refused",
                },
                "metadata:80 (169.254.169.254) is not an allowed destination: link-local addresses are refused"
                    .to_owned(),
            ),
            (
                ConnectError::Connect {
                    address,
                    source: io(),
                },
                format!("cannot connect to 10.0.0.1:22: {}", io()),
            ),
            (
                ConnectError::TimedOut {
                    host: "db".into(),
                    port: 5432,
                },
                "connecting to db:5432 took longer than 10 s".to_owned(),
            ),
        ];
        for (err, text) in cases {
            assert_eq!(err.to_string(), text);
        }
    }
}
