//! The relay's TLS identity and its QUIC endpoint: the certificate it serves (generated and self-signed on
//! first start, or CA-issued), the fingerprint peers pin, and the stateless-reset and connection-id keys
//! derived from its private key so that peers notice a restart at once.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cmdop_client::transport::{
    Limits, SERVER_NAME, apply_endpoint_limits, provider, transport_config,
};
use cmdop_proto::RelayFingerprint;
use cmdop_proto::wire::ALPN;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Sha256;

use crate::store::{StoreError, create_private_file, prepare_private_dir};

/// File name of the generated certificate in the data dir.
pub const CERT_FILE: &str = "relay-cert.pem";
/// File name of the generated private key in the data dir.
pub const KEY_FILE: &str = "relay-key.pem";

/// Errors of the relay's TLS setup.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read or written.
    #[error("cannot access {path}: {source}; check the path and its permissions")]
    File {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The private key file can be accessed by group or others.
    #[error(
        "{} is accessible by group or others (mode {mode:04o}) and is refused, since it holds the relay's private key; run `chmod 600 {}` (readable by the relay's user only), and replace the key if someone else may have read it",
        path.display(),
        path.display()
    )]
    KeyTooOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
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
    DataDir(#[from] StoreError),
}

/// The certificate chain and key the relay serves.
#[derive(Debug)]
pub struct TlsIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl TlsIdentity {
    /// Loads a PEM certificate chain (leaf first) and its PEM private key, e.g. a CA-issued certificate.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let cert_pem = std::fs::read(cert).map_err(|source| TlsError::File {
            path: cert.into(),
            source,
        })?;
        let key_pem = read_key_file(key)?;
        Self::from_pem(&cert_pem, &key_pem, cert, key)
    }

    fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        cert: &Path,
        key: &Path,
    ) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| TlsError::Pem {
                path: cert.into(),
                what: "certificate",
            })?;
        if chain.is_empty() {
            return Err(TlsError::Pem {
                path: cert.into(),
                what: "certificate",
            });
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| TlsError::Pem {
            path: key.into(),
            what: "private key",
        })?;
        Ok(Self { chain, key })
    }

    /// Loads the self-signed certificate from the data dir, generating it (files 0600) on first use.
    /// Returns whether it was generated now.
    pub fn load_or_generate(data_dir: &Path) -> Result<(Self, bool), TlsError> {
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
            .unwrap_or(RelayFingerprint::from_bytes([0; 32]))
    }
}

/// The fingerprint of the generated certificate stored in `data_dir`; reads only, never generates.
pub fn stored_fingerprint(data_dir: &Path) -> Result<RelayFingerprint, TlsError> {
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

/// Reads a private key file, refusing one that group or others can access (checked on the open handle).
fn read_key_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read as _;
    let cannot = |source| TlsError::File {
        path: path.into(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(cannot)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = file.metadata().map_err(cannot)?.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(TlsError::KeyTooOpen {
                path: path.into(),
                mode,
            });
        }
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(cannot)?;
    Ok(bytes)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    create_private_file(path)?;
    std::fs::write(path, bytes).map_err(|source| TlsError::File {
        path: path.into(),
        source,
    })
}

/// The relay's quinn server configuration.
pub(crate) fn server_config(
    identity: &TlsIdentity,
    limits: &Limits,
) -> Result<quinn::ServerConfig, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // Peers never resume a session (each connection builds a fresh client configuration), so tickets would
    // be a signature, an encryption and a cache entry per handshake for nothing; a reconnect storm of
    // thousands of agents is all handshakes.
    tls.send_tls13_tickets = 0;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::Tls(rustls::Error::General(e.to_string())))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(Arc::new(server_transport(transport_config(limits), limits)));
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

/// The relay's transport settings for a connection not yet logged in.
fn server_transport(
    mut transport: quinn::TransportConfig,
    limits: &Limits,
) -> quinn::TransportConfig {
    // Only the control stream until login; `server::session` raises a client's limit once it is logged in.
    transport.max_concurrent_bidi_streams(limits.login_bidi_streams.into());
    transport
}

/// The relay's server configuration per route MTU: a connection is accepted with MTU discovery bounded by
/// what the route back to its peer carries (`cmdop_client::transport::Limits::towards`), so a peer
/// behind an Ethernet route costs no 9 KB probe buffer. One configuration per distinct bound (a handful on
/// any relay), shared by every connection that has it.
pub(crate) struct RouteConfigs {
    base: quinn::ServerConfig,
    limits: Limits,
    made: std::sync::Mutex<Vec<(u16, Arc<quinn::ServerConfig>)>>,
}

impl std::fmt::Debug for RouteConfigs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteConfigs").finish_non_exhaustive()
    }
}

impl RouteConfigs {
    pub(crate) fn new(base: quinn::ServerConfig, limits: Limits) -> Self {
        Self {
            base,
            limits,
            made: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The configuration to accept a connection from `peer` with.
    pub(crate) fn towards(&self, peer: std::net::SocketAddr) -> Arc<quinn::ServerConfig> {
        let limits = self.limits.towards(peer);
        let bound = limits.mtu_upper_bound;
        let mut made = self
            .made
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, config)) = made.iter().find(|(b, _)| *b == bound) {
            return config.clone();
        }
        let mut config = self.base.clone();
        config.transport_config(Arc::new(server_transport(
            transport_config(&limits),
            &limits,
        )));
        let config = Arc::new(config);
        made.push((bound, config.clone()));
        config
    }
}

/// The least time between two stateless resets the relay sends (see `endpoint_config`).
pub const RESET_INTERVAL: std::time::Duration = std::time::Duration::ZERO;

/// The relay endpoint's configuration, with a stateless-reset key derived from the TLS private key.
///
/// quinn's default is a random key per process. Deriving it from the stored key instead means a restarted
/// relay answers packets of connections it no longer knows with a *valid* stateless reset (RFC 9000 §10.3),
/// so agents and clients learn of the restart from their next packet and reconnect at once, instead of
/// waiting out the idle timeout. The derivation is one-way (HKDF-SHA256), so the reset key reveals nothing
/// about the TLS key. Tested end to end: agents and clients resume within seconds of a relay restart.
pub(crate) fn endpoint_config(identity: &TlsIdentity, limits: &Limits) -> quinn::EndpointConfig {
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
    apply_endpoint_limits(&mut config, limits);
    // quinn sends at most one stateless reset per 20 ms by default: after a restart, 10,000 agents would need
    // 200 s to all hear theirs, and most would sit out the 30 s idle timeout instead. No interval at all: the
    // interval is checked against the time of the receive batch, so even one of 1 ms let a busy endpoint send
    // one reset per batch of datagrams, and in a storm of 10,000 agents a quarter heard none before their
    // heartbeat went unanswered (10 s after it was sent, up to a heartbeat interval after the restart). With a
    // reset for every packet of a connection the relay no longer knows, every agent hears of the restart
    // within one keep-alive interval (5 s), which also spreads their return over those 5 s. A reset is always
    // smaller than the packet that caused it (no amplification), and the keyed connection-id check above
    // drops stray packets before any reset is considered, which is what quinn asks of a small interval.
    config.min_reset_interval(RESET_INTERVAL);
    config
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Issue 13, hole 10: a relay-key.pem at mode 0644 was used silently. Key files that group or others can
    /// access are refused, the generated one and one given with `--key` alike, and left as they are.
    #[cfg(unix)]
    #[test]
    fn a_key_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        TlsIdentity::load_or_generate(dir.path()).unwrap();
        let key = dir.path().join(KEY_FILE);
        let cert = dir.path().join(CERT_FILE);
        for mode in [0o644, 0o640, 0o604] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            for err in [
                TlsIdentity::load_or_generate(dir.path())
                    .map(|_| ())
                    .unwrap_err(),
                TlsIdentity::from_pem_files(&cert, &key)
                    .map(|_| ())
                    .unwrap_err(),
                stored_fingerprint(dir.path()).map(|_| ()).unwrap_err(),
            ] {
                let err = err.to_string();
                assert!(
                    err.contains(&key.display().to_string()) && err.contains("chmod 600"),
                    "{mode:o}: {err}"
                );
            }
            let now = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(now, mode, "the key's mode was changed");
        }
        // The certificate is public: its mode does not matter.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(&cert, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(TlsIdentity::load_or_generate(dir.path()).is_ok());
    }
}
