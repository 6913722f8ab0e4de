//! QUIC and TLS for every cmdop endpoint: the transport limits, and the verifier that pins the relay's
//! certificate by fingerprint.
//!
//! The relay serves TLS 1.3 only, ALPN `cmdop/1`. Peers do not use the web PKI: they pin the SHA-256 of the
//! relay's leaf certificate ([`RelayFingerprint`]). The pin is checked inside the TLS handshake, so a mismatch
//! aborts the connection before any application byte (and so any credential) is sent. The relay server builds
//! its own endpoint from the same [`Limits`] and [`transport_config`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cmdop_proto::RelayFingerprint;
use cmdop_proto::wire::{ALPN, MAX_FRAME_SIZE};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// The TLS server name peers send; the pin, not the name, authenticates the relay.
pub const SERVER_NAME: &str = "cmdop-relay";

/// Errors of the local TLS and QUIC setup.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// rustls refused the configuration.
    #[error("invalid TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// QUIC and TLS limits of one endpoint; see `docs/relay.md` for the chosen values.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections (authenticated or not) served at once; more are refused.
    pub max_connections: usize,
    /// Connections still logging in at once; when full, a new attempt takes the slot of the oldest attempt of
    /// the source holding the most (see `cmdop_proto::admission`).
    pub max_unauthenticated: usize,
    /// Connections still logging in at once from one source (an IPv4 address or an IPv6 /64): half the slots,
    /// so that a script running 50 commands at once, or a NAT in front of many machines, is not refused, while
    /// the fair share (a full table gives the heaviest source's oldest slot to a newcomer) keeps the other
    /// half open to everyone else.
    pub max_unauthenticated_per_source: usize,
    /// From this many connections logging in, an attempt from an address not yet validated is answered with a
    /// QUIC Retry first (one extra round trip, and spoofed addresses never take a slot); below it, none is.
    pub retry_from: usize,
    /// Connections one client credential (a member or admin API key, a user token) may hold at once; a login
    /// beyond is refused with `BUSY`. Agent logins are not counted: one agent key is shared by a fleet's
    /// machines, and each machine holds one connection (a newer one replaces the older).
    pub max_connections_per_credential: usize,
    /// Time a connection has to finish its login.
    pub login_deadline: Duration,
    /// Bidirectional streams a peer may have open at once: the control stream plus one per routed stream (every
    /// forwarded TCP connection is one), so it matches the agent's own limit on streams served at once.
    pub max_bidi_streams: u32,
    /// Bidirectional streams the relay lets a peer open before it has logged in: its control stream. quinn
    /// keeps state for every stream a peer may open, allocated up front, so the relay starts every connection
    /// here and raises a client's limit to `max_bidi_streams` once it has logged in; an agent never opens
    /// another stream (the relay opens the ones routed to it), so its connection stays at this.
    pub login_bidi_streams: u32,
    /// Per-stream receive window, bytes.
    pub stream_receive_window: u32,
    /// Per-connection receive window, bytes.
    pub connection_receive_window: u32,
    /// Per-connection send window, bytes.
    pub send_window: u64,
    /// A connection silent this long is closed.
    pub idle_timeout: Duration,
    /// Keep-alive sent by clients, below the idle timeout so NAT bindings and the connection survive.
    pub keep_alive: Duration,
    /// Largest control frame body (fixed by the protocol: [`MAX_FRAME_SIZE`]).
    pub max_frame_size: usize,
    /// Largest UDP payload path MTU discovery may probe for. Discovery only raises the packet size after a
    /// probe of that size was acknowledged, so a high bound is safe on any path; where the path allows big
    /// packets (loopback, jumbo-frame LANs) far fewer packets carry the same bytes. 8,972 bytes, a 9,000-byte
    /// jumbo frame's UDP payload: every connection keeps a send buffer of its largest packet, and the receiver
    /// parses each probe's padding byte by byte, so larger bounds cost memory and CPU per connection for
    /// nothing: on loopback, against 16 KiB, `bench tunnel` went from 0.96× to 1.01× `ssh -L` (a batch of
    /// 9 KB packets fits one 64 KiB offload send), exec from 9.1 to 8.4 ms, and an idle agent from 54 to
    /// 46 KiB of relay memory (at 65,000 it was 106). Each connection lowers it to what its route carries
    /// ([`mtu_upper_bound_towards`]).
    pub mtu_upper_bound: u16,
    /// Largest UDP payload this endpoint accepts, announced to the peer as the `max_udp_payload_size` transport
    /// parameter. The peer never sends a larger packet, so MTU discovery towards us stops here whatever
    /// [`Self::mtu_upper_bound`] says: quinn's default of 1,472 kept every packet on loopback at ~1.4 KB.
    pub max_udp_payload_size: u16,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 16_384,
            max_unauthenticated: 128,
            max_unauthenticated_per_source: 64,
            retry_from: 32,
            max_connections_per_credential: 64,
            login_deadline: Duration::from_secs(10),
            max_bidi_streams: 256,
            login_bidi_streams: 1,
            stream_receive_window: 1024 * 1024,
            connection_receive_window: 4 * 1024 * 1024,
            send_window: 4 * 1024 * 1024,
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
            max_frame_size: MAX_FRAME_SIZE,
            mtu_upper_bound: 8_972,
            max_udp_payload_size: 65_527,
        }
    }
}

impl Limits {
    /// These limits for a connection to or from `peer`: the MTU bound lowered to what the route to it carries
    /// ([`mtu_upper_bound_towards`]).
    pub fn towards(&self, peer: SocketAddr) -> Self {
        Self {
            mtu_upper_bound: mtu_upper_bound_towards(self, peer),
            ..self.clone()
        }
    }

    /// The connection-level windows (receive and send) of the connection between an agent and the relay: room
    /// for every stream's window at once, plus one for the control stream.
    ///
    /// That connection carries every client's streams to one machine. With smaller connection-level windows a
    /// few streams whose reader stopped reading (a forward nobody drains) hold all of the connection's
    /// credit, and then nothing else moves on it: other clients' streams, and the agent's heartbeats, so the
    /// relay drops the machine (lab finding L1). Per-stream windows still bound the memory: a stream holds at
    /// most `stream_receive_window` unread bytes, and a connection at most `max_bidi_streams` streams, so at
    /// most this many bytes wait at either end, and only while clients do not read what they asked for.
    pub fn carrier_window(&self) -> u64 {
        (u64::from(self.max_bidi_streams) + 1) * u64::from(self.stream_receive_window)
    }
}

/// What an endpoint with many connections asks the kernel for, per direction, for its UDP socket's buffer.
///
/// A reconnect storm sends thousands of handshake packets (1,200 bytes or more each) at once; the kernel's
/// default receive buffer (208 KiB on most systems) holds about 170 and drops the rest, each drop a
/// retransmission a second later. Linux grants at most `net.core.rmem_max` / `wmem_max` (docs/relay.md says
/// how to raise them); asking for more than that is not an error.
pub const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// A UDP socket bound to `bind` with [`SOCKET_BUFFER`]-sized buffers (as large as the kernel allows), for a
/// quinn endpoint: the relay's, a shared `Dialer`'s, and each client's and agent's own.
pub fn udp_socket(bind: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(bind)?;
    let sock = socket2::SockRef::from(&socket);
    // Best effort: a kernel that grants less (or a sandbox that refuses) still leaves a working socket.
    if let Err(err) = sock.set_recv_buffer_size(SOCKET_BUFFER) {
        tracing::debug!(%err, "cannot enlarge the UDP receive buffer");
    }
    if let Err(err) = sock.set_send_buffer_size(SOCKET_BUFFER) {
        tracing::debug!(%err, "cannot enlarge the UDP send buffer");
    }
    Ok(socket)
}

/// The quinn transport settings for `limits`: windows, stream caps, keep-alive, idle timeout, MTU discovery.
pub fn transport_config(limits: &Limits) -> quinn::TransportConfig {
    let mut config = quinn::TransportConfig::default();
    config
        .max_concurrent_bidi_streams(limits.max_bidi_streams.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window(limits.stream_receive_window.into())
        .receive_window(limits.connection_receive_window.into())
        .send_window(limits.send_window)
        .datagram_receive_buffer_size(None)
        .keep_alive_interval(Some(limits.keep_alive));
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(limits.mtu_upper_bound)
        .minimum_change(mtu_search_step(limits.mtu_upper_bound));
    config.mtu_discovery_config(Some(mtu));
    if let Ok(idle) = quinn::IdleTimeout::try_from(limits.idle_timeout) {
        config.max_idle_timeout(Some(idle));
    }
    config
}

/// The largest UDP payload the route to `peer` carries unfragmented, as this machine's kernel knows it: the MTU
/// of the interface the route leaves by (or a smaller path MTU the kernel has learned), minus the IP and UDP
/// headers. `None` where the kernel cannot say (no route, or not Linux).
///
/// Asked of a UDP socket connected to `peer`, which sends nothing. Cheap: a socket, a `connect(2)` and a
/// `getsockopt(2)`.
pub fn route_payload_ceiling(peer: SocketAddr) -> Option<u16> {
    // An IPv4 peer reached through a dual-stack socket still travels in IPv4 packets.
    let peer = match peer {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => peer,
        },
        SocketAddr::V4(_) => peer,
    };
    route_mtu(peer).map(|mtu| {
        let headers = if peer.is_ipv4() { 20 + 8 } else { 40 + 8 };
        u16::try_from(mtu.saturating_sub(headers)).unwrap_or(u16::MAX)
    })
}

#[cfg(target_os = "linux")]
fn route_mtu(peer: SocketAddr) -> Option<u32> {
    let bind: SocketAddr = if peer.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = std::net::UdpSocket::bind(bind).ok()?;
    socket.connect(peer).ok()?;
    if peer.is_ipv4() {
        rustix::net::sockopt::ip_mtu(&socket).ok()
    } else {
        rustix::net::sockopt::ipv6_mtu(&socket).ok()
    }
}

#[cfg(not(target_os = "linux"))]
fn route_mtu(_peer: SocketAddr) -> Option<u32> {
    None
}

/// [`Limits::mtu_upper_bound`], lowered to what the route to `peer` carries ([`route_payload_ceiling`]), never
/// below QUIC's 1,200.
///
/// Path MTU discovery probes above what the first hop carries can never succeed, yet they cost: quinn builds
/// each probe, padded to its full size, in the connection's send buffer, which keeps that capacity for the
/// connection's life (on an Ethernet route the first probe towards a 9 KB bound is 5,086 bytes), and a probe
/// that does arrive is parsed padding byte by padding byte. On a route that carries big packets (loopback, a
/// jumbo-frame LAN) the configured bound stands.
pub fn mtu_upper_bound_towards(limits: &Limits, peer: SocketAddr) -> u16 {
    match route_payload_ceiling(peer) {
        Some(ceiling) => limits.mtu_upper_bound.min(ceiling).max(1200),
        None => limits.mtu_upper_bound,
    }
}

/// [`transport_config`] for a connection to or from `peer`: MTU discovery bounded by the route
/// ([`Limits::towards`]).
pub fn transport_config_towards(limits: &Limits, peer: SocketAddr) -> quinn::TransportConfig {
    transport_config(&limits.towards(peer))
}

/// The smallest change path MTU discovery keeps searching for, towards `upper_bound`: a sixteenth of the range
/// above QUIC's 1,200 bytes, and at least quinn's default of 20.
///
/// quinn searches by halving the range, and every probe is a packet of the probed size, padded with PADDING
/// frames that the receiver parses one byte at a time (~12 ns a byte: half of the relay's CPU during a
/// registration storm on loopback went there). With quinn's fixed step of 20 bytes, the search towards 16 KiB
/// took 10 probes, ~147 KB of padding each way per connection; with a sixteenth it takes 5 (~67 KB) and ends
/// within a sixteenth of the range below the bound, or on it when the route carries it. Towards 8,972 that is
/// 5 probes (~35 KB); towards an Ethernet bound (1,472) the step stays 20.
pub fn mtu_search_step(upper_bound: u16) -> u16 {
    (upper_bound.saturating_sub(1200) / 16).max(20)
}

/// Applies the endpoint-wide limits to `config`: the largest UDP payload this endpoint accepts.
pub fn apply_endpoint_limits(config: &mut quinn::EndpointConfig, limits: &Limits) {
    // quinn refuses values outside 1200..=65527; the default is then kept, which is safe.
    let _ = config.max_udp_payload_size(limits.max_udp_payload_size);
}

/// A client-only endpoint on `bind` with the endpoint-wide [`Limits`] applied.
pub fn client_endpoint(bind: SocketAddr, limits: &Limits) -> std::io::Result<quinn::Endpoint> {
    let socket = udp_socket(bind)?;
    let mut config = quinn::EndpointConfig::default();
    apply_endpoint_limits(&mut config, limits);
    endpoint(config, None, socket)
}

/// A quinn endpoint on `socket`, on the current tokio runtime, whose sends never exceed what one UDP send can
/// carry (see `SplitBatches`).
pub fn endpoint(
    config: quinn::EndpointConfig,
    server: Option<quinn::ServerConfig>,
    socket: std::net::UdpSocket,
) -> std::io::Result<quinn::Endpoint> {
    let runtime =
        quinn::default_runtime().ok_or_else(|| std::io::Error::other("no async runtime found"))?;
    let socket = runtime.wrap_udp_socket(socket)?;
    let socket: Arc<dyn quinn::AsyncUdpSocket> = Arc::new(SplitBatches(socket));
    quinn::Endpoint::new_with_abstract_socket(config, server, socket, runtime)
}

/// The most UDP payload one send can carry, segmentation offload or not: an IPv4 datagram's 65,535 bytes less
/// its IP and UDP headers (IPv6 allows 20 bytes more; the smaller bound serves both).
const MAX_SEND_BYTES: usize = 65_535 - 20 - 8;

/// Splits quinn's segmentation-offload batches that one UDP send cannot carry.
///
/// quinn hands the socket up to ten datagrams of the path MTU in one send. Once MTU discovery has raised the
/// MTU beyond ~6.5 KB (loopback, jumbo frames), such a batch exceeds 64 KiB; Linux refuses it with EMSGSIZE,
/// which quinn-udp takes for a failed MTU probe and drops without a word. Those losses then look like an MTU
/// black hole, and quinn falls back to 1,200-byte packets for a minute at a time. Here the batch goes out in
/// as few sends as fit instead.
#[derive(Debug)]
struct SplitBatches(Arc<dyn quinn::AsyncUdpSocket>);

impl quinn::AsyncUdpSocket for SplitBatches {
    fn create_io_poller(self: Arc<Self>) -> std::pin::Pin<Box<dyn quinn::UdpPoller>> {
        Arc::clone(&self.0).create_io_poller()
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit<'_>) -> std::io::Result<()> {
        let Some(segment) = transmit
            .segment_size
            .filter(|&segment| segment > 0 && transmit.contents.len() > MAX_SEND_BYTES)
        else {
            return self.0.try_send(transmit);
        };
        let per_send = (MAX_SEND_BYTES / segment).max(1) * segment;
        for part in transmit.contents.chunks(per_send) {
            // A send that would block fails the whole batch, and quinn retries all of it: datagrams already
            // sent then arrive twice, and the receiver drops the duplicates.
            self.0.try_send(&quinn::udp::Transmit {
                destination: transmit.destination,
                ecn: transmit.ecn,
                contents: part,
                segment_size: (part.len() > segment).then_some(segment),
                src_ip: transmit.src_ip,
            })?;
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut std::task::Context<'_>,
        bufs: &mut [std::io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.0.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.0.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.0.may_fragment()
    }
}

/// One connection's UDP traffic so far, for the log line a relay writes when a connection ends: whether big
/// packets and segmentation offload are in use shows here (bytes per datagram, datagrams per system call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    /// Datagrams, bytes and send calls (a GSO batch is one call for several datagrams).
    pub sent: (u64, u64, u64),
    /// Datagrams, bytes and receive calls (GRO hands several datagrams over in one).
    pub received: (u64, u64, u64),
    /// Packets declared lost.
    pub lost_packets: u64,
    /// The path MTU reached by discovery, bytes of UDP payload.
    pub mtu: u16,
    /// Times MTU discovery concluded the path had become a black hole and fell back to 1,200 bytes.
    pub black_holes: u64,
}

impl Traffic {
    /// The counters of `connection`.
    pub fn of(connection: &quinn::Connection) -> Self {
        let stats = connection.stats();
        Self {
            sent: (stats.udp_tx.datagrams, stats.udp_tx.bytes, stats.udp_tx.ios),
            received: (stats.udp_rx.datagrams, stats.udp_rx.bytes, stats.udp_rx.ios),
            lost_packets: stats.path.lost_packets,
            mtu: stats.path.current_mtu,
            black_holes: stats.path.black_holes_detected,
        }
    }
}

impl std::fmt::Display for Traffic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let side = |f: &mut std::fmt::Formatter<'_>, (datagrams, bytes, ios): (u64, u64, u64)| {
            write!(
                f,
                "{datagrams} datagrams, {bytes} bytes ({} per datagram) in {ios} calls",
                bytes.checked_div(datagrams).unwrap_or(0)
            )
        };
        f.write_str("sent ")?;
        side(f, self.sent)?;
        f.write_str("; received ")?;
        side(f, self.received)?;
        write!(
            f,
            "; {} lost; path MTU {} ({} black holes)",
            self.lost_packets, self.mtu, self.black_holes
        )
    }
}

/// The one crypto provider every cmdop endpoint uses: rustls with ring (it builds with a C compiler alone).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A peer's quinn client configuration that only accepts the relay certificate with fingerprint `pin`. The
/// fingerprint actually presented is written to `seen`, so a mismatch can be reported precisely.
pub fn client_config(
    pin: RelayFingerprint,
    seen: Arc<Mutex<Option<RelayFingerprint>>>,
    limits: &Limits,
) -> Result<quinn::ClientConfig, TransportError> {
    let provider = provider();
    let verifier = Arc::new(PinnedCertVerifier {
        pin,
        seen,
        provider: provider.clone(),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TransportError::Tls(rustls::Error::General(e.to_string())))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::new(transport_config(limits)));
    Ok(config)
}

/// Accepts exactly one leaf certificate, by fingerprint. The handshake signature is still verified with that
/// certificate's key, so presenting a copied certificate without its key fails.
#[derive(Debug)]
struct PinnedCertVerifier {
    pin: RelayFingerprint,
    seen: Arc<Mutex<Option<RelayFingerprint>>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = RelayFingerprint::of_cert(end_entity);
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(presented);
        }
        // RelayFingerprint compares in constant time.
        if presented == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is offered, so this is unreachable in practice; refuse rather than accept.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn::AsyncUdpSocket as _;

    /// A batch of ten 9,000-byte datagrams (90 KB, more than one UDP send can carry) goes out whole: the
    /// receiver gets all ten. Unsplit, Linux refuses the send and quinn drops the batch without a word.
    #[tokio::test]
    async fn an_oversized_offload_batch_is_split_and_every_datagram_arrives() {
        let receiver = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let socket = udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let runtime = quinn::default_runtime().unwrap();
        let inner = runtime.wrap_udp_socket(socket).unwrap();
        let segments = inner.max_transmit_segments().min(10);
        let split = Arc::new(SplitBatches(inner));
        // A fresh socket's readiness is unknown to the reactor until polled once.
        let mut poller = Arc::clone(&split).create_io_poller();
        std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx))
            .await
            .unwrap();
        let segment = 9_000;
        let contents: Vec<u8> = (0..segment * segments)
            .map(|i| (i / segment) as u8)
            .collect();
        let destination = receiver.local_addr().unwrap();
        split
            .try_send(&quinn::udp::Transmit {
                destination,
                ecn: None,
                contents: &contents,
                segment_size: (segments > 1).then_some(segment),
                src_ip: None,
            })
            .unwrap();
        let mut buf = vec![0u8; 65_536];
        for index in 0..segments {
            let n = tokio::time::timeout(Duration::from_secs(5), receiver.recv(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(n, segment);
            assert!(
                buf[..n].iter().all(|&b| b == index as u8),
                "datagram {index}"
            );
        }
    }

    /// The loopback interface's MTU, as `ip link` shows it.
    #[cfg(target_os = "linux")]
    fn loopback_mtu() -> u32 {
        std::fs::read_to_string("/sys/class/net/lo/mtu")
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn mtu_discovery_stops_where_the_route_does() {
        let lo = loopback_mtu();
        let v4: SocketAddr = "127.0.0.1:9".parse().unwrap();
        // An IPv4 packet is at most 65,535 bytes whatever the interface allows (loopback's MTU is 65,536).
        let ceiling = u16::try_from(lo.min(65_535) - 28).unwrap();
        assert_eq!(route_payload_ceiling(v4), Some(ceiling));
        // An IPv4 peer seen through a dual-stack socket travels in IPv4 packets.
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:9".parse().unwrap();
        assert_eq!(route_payload_ceiling(mapped), Some(ceiling));

        // A bound above what the route carries comes down to it; one below stays.
        let high = Limits {
            mtu_upper_bound: u16::MAX,
            ..Limits::default()
        };
        assert_eq!(mtu_upper_bound_towards(&high, v4), ceiling);
        let low = Limits {
            mtu_upper_bound: 1300,
            ..Limits::default()
        };
        assert_eq!(mtu_upper_bound_towards(&low, v4), 1300);
        // A route the kernel does not know leaves the bound alone rather than failing the connection.
        let unroutable: SocketAddr = "[2001:db8::1]:9".parse().unwrap();
        if route_payload_ceiling(unroutable).is_none() {
            assert_eq!(mtu_upper_bound_towards(&high, unroutable), u16::MAX);
        }
    }
}
