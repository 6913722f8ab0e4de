//! QUIC and TLS setup: the relay's certificate, its fingerprint, and the pinning verifier peers use.
//!
//! The relay serves TLS 1.3 only, ALPN `cmdop/1`. Peers do not use the web PKI: they pin the SHA-256 of the
//! relay's leaf certificate (DER), written `sha256:<64 hex digits>`. The pin is checked inside the TLS handshake,
//! so a mismatch aborts the connection before any application byte (and so any credential) is sent.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::store::{create_private_file, prepare_private_dir};
use crate::wire::{ALPN, MAX_FRAME_SIZE};

/// File name of the generated certificate in the data dir.
pub const CERT_FILE: &str = "relay-cert.pem";
/// File name of the generated private key in the data dir.
pub const KEY_FILE: &str = "relay-key.pem";
/// The TLS server name peers send; the pin, not the name, authenticates the relay.
pub const SERVER_NAME: &str = "cmdop-relay";

/// Errors of the transport setup.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A certificate or key file could not be read or written.
    #[error("cannot access {path}: {source}; check the path and its permissions")]
    File {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error(
        "{path} holds no usable PEM {what}; pass a PEM certificate chain to --cert and its private key to --key"
    )]
    Pem {
        /// The file involved.
        path: PathBuf,
        /// `certificate` or `private key`.
        what: &'static str,
    },
    /// Certificate generation failed.
    #[error("cannot generate the relay certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration (e.g. the key does not match the certificate).
    #[error("invalid TLS configuration: {0}; check that --key belongs to --cert")]
    Tls(#[from] rustls::Error),
    /// The data dir could not be prepared.
    #[error(transparent)]
    DataDir(#[from] crate::store::StoreError),
    /// The fingerprint text is malformed.
    #[error(
        "invalid relay fingerprint {0:?}: expected sha256:<64 hex digits> as printed by `cmdop-relay fingerprint`"
    )]
    BadFingerprint(String),
}

/// SHA-256 of the relay's leaf certificate (DER). Text form: `sha256:<64 lowercase hex digits>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RelayFingerprint([u8; 32]);

impl RelayFingerprint {
    /// The fingerprint of a DER certificate.
    pub fn of_cert(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for RelayFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for RelayFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelayFingerprint({self})")
    }
}

impl FromStr for RelayFingerprint {
    type Err = TransportError;

    /// Accepts `sha256:<hex>` (prefix case-insensitive), upper- or lowercase hex, with optional `:` separators.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || TransportError::BadFingerprint(text.to_owned());
        let trimmed = text.trim();
        let hex_part = match trimmed.get(..7) {
            Some(prefix) if prefix.eq_ignore_ascii_case("sha256:") => {
                trimmed.get(7..).unwrap_or_default()
            }
            _ => trimmed,
        };
        let compact: String = hex_part.chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(compact.to_ascii_lowercase()).map_err(|_| bad())?;
        let digest: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        Ok(Self(digest))
    }
}

/// The certificate chain and key the relay serves.
#[derive(Debug)]
pub struct TlsIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl TlsIdentity {
    /// Loads a PEM certificate chain (leaf first) and its PEM private key, e.g. a CA-issued certificate.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TransportError> {
        let cert_pem = std::fs::read(cert).map_err(|source| TransportError::File {
            path: cert.into(),
            source,
        })?;
        let key_pem = std::fs::read(key).map_err(|source| TransportError::File {
            path: key.into(),
            source,
        })?;
        Self::from_pem(&cert_pem, &key_pem, cert, key)
    }

    fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        cert: &Path,
        key: &Path,
    ) -> Result<Self, TransportError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| TransportError::Pem {
                path: cert.into(),
                what: "certificate",
            })?;
        if chain.is_empty() {
            return Err(TransportError::Pem {
                path: cert.into(),
                what: "certificate",
            });
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| TransportError::Pem {
            path: key.into(),
            what: "private key",
        })?;
        Ok(Self { chain, key })
    }

    /// Loads the self-signed certificate from the data dir, generating it (files 0600) on first use.
    /// Returns whether it was generated now.
    pub fn load_or_generate(data_dir: &Path) -> Result<(Self, bool), TransportError> {
        prepare_private_dir(data_dir)?;
        let cert_path = data_dir.join(CERT_FILE);
        let key_path = data_dir.join(KEY_FILE);
        if cert_path.exists() && key_path.exists() {
            return Ok((Self::from_pem_files(&cert_path, &key_path)?, false));
        }
        let generated = rcgen::generate_simple_self_signed(vec![
            SERVER_NAME.to_owned(),
            "localhost".to_owned(),
        ])?;
        write_private(&key_path, generated.signing_key.serialize_pem().as_bytes())?;
        write_private(&cert_path, generated.cert.pem().as_bytes())?;
        Ok((Self::from_pem_files(&cert_path, &key_path)?, true))
    }

    /// The fingerprint of the leaf certificate: what peers pin.
    pub fn fingerprint(&self) -> RelayFingerprint {
        // from_pem guarantees a non-empty chain.
        self.chain
            .first()
            .map(|leaf| RelayFingerprint::of_cert(leaf))
            .unwrap_or(RelayFingerprint([0; 32]))
    }
}

/// The fingerprint of the generated certificate stored in `data_dir`; reads only, never generates.
pub fn stored_fingerprint(data_dir: &Path) -> Result<RelayFingerprint, TransportError> {
    Ok(
        TlsIdentity::from_pem_files(&data_dir.join(CERT_FILE), &data_dir.join(KEY_FILE))?
            .fingerprint(),
    )
}

/// The fingerprint of the first certificate in a PEM file (the leaf), e.g. a CA-issued one passed to `--cert`.
pub fn leaf_fingerprint_from_pem(pem: &[u8]) -> Option<RelayFingerprint> {
    CertificateDer::pem_slice_iter(pem)
        .next()?
        .ok()
        .map(|leaf| RelayFingerprint::of_cert(&leaf))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TransportError> {
    create_private_file(path)?;
    std::fs::write(path, bytes).map_err(|source| TransportError::File {
        path: path.into(),
        source,
    })
}

/// QUIC and TLS limits of one endpoint; see `docs/relay.md` for the chosen values.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections (authenticated or not) served at once; more are refused.
    pub max_connections: usize,
    /// Connections still logging in at once; more are refused.
    pub max_unauthenticated: usize,
    /// Time a connection has to finish its login.
    pub login_deadline: Duration,
    /// Bidirectional streams a peer may have open at once: the control stream plus one per routed stream (every
    /// forwarded TCP connection is one), so it matches the agent's own limit on streams served at once.
    pub max_bidi_streams: u32,
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
    /// packets (loopback, jumbo-frame LANs) far fewer packets carry the same bytes.
    pub mtu_upper_bound: u16,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_unauthenticated: 128,
            login_deadline: Duration::from_secs(10),
            max_bidi_streams: 256,
            stream_receive_window: 1024 * 1024,
            connection_receive_window: 4 * 1024 * 1024,
            send_window: 4 * 1024 * 1024,
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
            max_frame_size: MAX_FRAME_SIZE,
            mtu_upper_bound: 65_000,
        }
    }
}

fn transport_config(limits: &Limits) -> quinn::TransportConfig {
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
    mtu.upper_bound(limits.mtu_upper_bound);
    config.mtu_discovery_config(Some(mtu));
    if let Ok(idle) = quinn::IdleTimeout::try_from(limits.idle_timeout) {
        config.max_idle_timeout(Some(idle));
    }
    config
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The relay's quinn server configuration.
pub(crate) fn server_config(
    identity: &TlsIdentity,
    limits: &Limits,
) -> Result<quinn::ServerConfig, TransportError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TransportError::Tls(rustls::Error::General(e.to_string())))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(Arc::new(transport_config(limits)));
    // Each connection beyond this is refused at the QUIC layer before any TLS work.
    config.max_incoming(
        limits
            .max_connections
            .saturating_add(limits.max_unauthenticated),
    );
    config.incoming_buffer_size(64 * 1024);
    config.incoming_buffer_size_total(8 * 1024 * 1024);
    Ok(config)
}

/// The relay endpoint's configuration, with a stateless-reset key derived from the TLS private key.
///
/// quinn's default is a random key per process. Deriving it from the stored key instead means a restarted
/// relay answers packets of connections it no longer knows with a *valid* stateless reset (RFC 9000 §10.3),
/// so agents and clients learn of the restart from their next packet and reconnect at once, instead of
/// waiting out the idle timeout. The derivation is one-way (HKDF-SHA256), so the reset key reveals nothing
/// about the TLS key. Tested end to end: agents and clients resume within seconds of a relay restart.
pub(crate) fn endpoint_config(identity: &TlsIdentity) -> quinn::EndpointConfig {
    let mut reset_key = zeroize::Zeroizing::new([0u8; 32]);
    let hkdf = hkdf::Hkdf::<Sha256>::new(Some(b"cmdop relay"), identity.key.secret_der());
    // 32 bytes is far below HKDF-SHA256's output limit, so expand cannot fail.
    let _ = hkdf.expand(b"cmdop stateless reset v1", reset_key.as_mut_slice());
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_key.as_slice());
    let mut config = quinn::EndpointConfig::new(Arc::new(key));
    // quinn's connection ids carry a keyed check and packets failing it are dropped before any reset is
    // considered; the key must survive the restart as well, or the new process ignores the old ids.
    let mut cid_key = [0u8; 8];
    let _ = hkdf.expand(b"cmdop connection id v1", &mut cid_key);
    let cid_key = u64::from_le_bytes(cid_key);
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    config
}

/// A peer's quinn client configuration that only accepts the relay certificate with fingerprint `pin`. The
/// fingerprint actually presented is written to `seen`, so a mismatch can be reported precisely.
pub(crate) fn client_config(
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
        if bool::from(presented.0.ct_eq(&self.pin.0)) {
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

    #[test]
    fn fingerprint_text_round_trip() {
        let fp = RelayFingerprint::of_cert(b"cert");
        let text = fp.to_string();
        assert!(text.starts_with("sha256:") && text.len() == 7 + 64);
        assert_eq!(text.parse::<RelayFingerprint>().unwrap(), fp);
        assert_eq!(text.to_uppercase().parse::<RelayFingerprint>().unwrap(), fp);
        assert_eq!(
            text.trim_start_matches("sha256:")
                .parse::<RelayFingerprint>()
                .unwrap(),
            fp
        );
        assert!("sha256:abcd".parse::<RelayFingerprint>().is_err());
        assert!("".parse::<RelayFingerprint>().is_err());
    }

    #[cfg(unix)]
    #[test]
    fn generated_certificate_is_private_and_stable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (first, generated) = TlsIdentity::load_or_generate(dir.path()).unwrap();
        assert!(generated);
        let (second, generated) = TlsIdentity::load_or_generate(dir.path()).unwrap();
        assert!(!generated);
        assert_eq!(first.fingerprint(), second.fingerprint());
        assert_eq!(stored_fingerprint(dir.path()).unwrap(), first.fingerprint());
        for file in [CERT_FILE, KEY_FILE] {
            let mode = std::fs::metadata(dir.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
    }
}
