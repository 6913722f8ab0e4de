//! The client's local state: its config directory, its own Ed25519 identity, and the saved login
//! (relay, pinned fingerprint, and the credential sealed under a key derived from that identity).
//!
//! ```text
//!  config dir (0700)
//!  └── client/
//!      ├── agent_keypair.bin / .key   the CLI's identity (the same encrypted store as an agent's)
//!      └── login.json                 relay, fingerprint, AES-256-GCM(credential)        (0600)
//! ```
//!
//! The credential is never written in clear: its key is derived from the identity seed, whose own key lives
//! in the OS keyring where one answers, else in a 0600 key file.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::{Context as _, bail};
use cmdop_client::RelayTarget;
use cmdop_identity::store;
use cmdop_identity::{Identity, KeyPurpose};
use cmdop_keystore::{KekBackend, SeedStore, StoreInfo};
use cmdop_proto::{FingerprintParseError, RelayFingerprint};
use rand::RngCore as _;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::exit::{Failure, Kind};
use crate::global_args::GlobalArgs;

const LOGIN_FILE: &str = "login.json";
const LOGIN_FORMAT: u32 = 1;

/// Everything a command needs to reach the relay.
pub(crate) struct Session {
    /// The relay and its pinned fingerprint.
    pub(crate) relay: RelayTarget,
    /// The credential text (API key or user token).
    pub(crate) credential: Zeroizing<String>,
    /// This client's identity.
    pub(crate) identity: Identity,
}

/// The client's state directory and identity store.
pub(crate) struct Profile {
    dir: PathBuf,
    store: SeedStore,
}

/// `login.json`: what `cmdop login` saved.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SavedLogin {
    format: u32,
    /// `HOST:PORT` of the relay.
    pub(crate) relay: String,
    /// The pinned certificate fingerprint.
    pub(crate) relay_fingerprint: String,
    /// Hex of nonce ‖ AES-256-GCM ciphertext of the credential; associated data binds relay and fingerprint.
    sealed_credential: String,
}

impl Profile {
    /// The profile in `--config-dir`, `CMDOP_CONFIG_DIR` or the XDG default.
    pub(crate) fn open(global: &GlobalArgs) -> Result<Self, Failure> {
        let base = match &global.config_dir {
            Some(dir) => dir.clone(),
            None => store::default_config_dir().ok_or_else(|| {
                Failure::new(
                    Kind::General,
                    "cannot find a config directory (neither XDG_CONFIG_HOME nor HOME is set); pass --config-dir or set CMDOP_CONFIG_DIR",
                )
            })?,
        };
        let dir = base.join("client");
        let store = SeedStore::new(dir.clone(), KekBackend::Auto);
        Ok(Self { dir, store })
    }

    /// The client's identity, created on first use.
    pub(crate) fn identity(&self) -> anyhow::Result<(Identity, StoreInfo)> {
        let (identity, info, _) = self
            .store
            .load_or_create_with_os_rng()
            .context("cannot load or create this client's identity")?;
        Ok((identity, info))
    }

    /// The client directory (`<config>/client`).
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where `login.json` lives.
    pub(crate) fn login_path(&self) -> PathBuf {
        self.dir.join(LOGIN_FILE)
    }

    /// The saved login, if any.
    pub(crate) fn saved_login(&self) -> anyhow::Result<Option<SavedLogin>> {
        let path = self.login_path();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
        };
        let mode = fs::metadata(&path)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "{} is readable by other users (mode {mode:o}); run `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
        let saved: SavedLogin = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is not a valid login file; run `cmdop logout` and `cmdop login` again",
                path.display()
            )
        })?;
        if saved.format != LOGIN_FORMAT {
            bail!(
                "{} has format {} but this cmdop reads format {LOGIN_FORMAT}; log in again",
                path.display(),
                saved.format
            );
        }
        Ok(Some(saved))
    }

    /// Seals `credential` and saves it with the relay, replacing any earlier login.
    pub(crate) fn save_login(
        &self,
        identity: &Identity,
        relay: &RelayTarget,
        credential: &str,
    ) -> anyhow::Result<PathBuf> {
        let fingerprint = relay.fingerprint.to_string();
        let key = identity.derive_key(KeyPurpose::ClientLoginStore);
        let cipher =
            Aes256Gcm::new_from_slice(key.as_slice()).context("login key has the wrong length")?;
        let mut nonce = [0u8; 12];
        OsRng.fill_bytes(&mut nonce);
        let aad = associated_data(&relay.address, &fingerprint);
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: credential.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| anyhow::anyhow!("cannot encrypt the credential"))?;
        let saved = SavedLogin {
            format: LOGIN_FORMAT,
            relay: relay.address.clone(),
            relay_fingerprint: fingerprint,
            sealed_credential: hex::encode([nonce.as_slice(), &sealed].concat()),
        };
        let path = self.login_path();
        write_private(&path, &serde_json::to_vec_pretty(&saved)?)?;
        Ok(path)
    }

    /// Removes the saved login; `false` if there was none.
    pub(crate) fn forget_login(&self) -> anyhow::Result<bool> {
        let path = self.login_path();
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(err) => Err(err).with_context(|| format!("cannot remove {}", path.display())),
        }
    }

    /// The relay from the flags, else from the saved login; flags win.
    pub(crate) fn relay_target(
        &self,
        global: &GlobalArgs,
        saved: Option<&SavedLogin>,
    ) -> Result<RelayTarget, Failure> {
        let address = global.relay.clone().or_else(|| saved.map(|s| s.relay.clone())).ok_or_else(|| {
            Failure::new(
                Kind::General,
                "not logged in; run `cmdop login --relay HOST:PORT --relay-fingerprint FP`, or pass --relay, --relay-fingerprint and an API key",
            )
        })?;
        let fingerprint = global
            .relay_fingerprint
            .clone()
            .or_else(|| saved.map(|s| s.relay_fingerprint.clone()))
            .ok_or_else(|| Failure::new(Kind::General, "no relay fingerprint; pass --relay-fingerprint (from `cmdop-relay fingerprint`)"))?;
        // A bad --relay-fingerprint is a usage error; a bad saved one is a broken file.
        let kind = if global.relay_fingerprint.is_some() {
            Kind::Usage
        } else {
            Kind::General
        };
        let fingerprint: RelayFingerprint = fingerprint
            .parse()
            .map_err(|err: FingerprintParseError| Failure::new(kind, err.to_string()))?;
        Ok(RelayTarget::new(address, fingerprint))
    }

    /// Combines flags, environment and the saved login into a session; flags win.
    pub(crate) fn session(&self, global: &GlobalArgs) -> Result<Session, Failure> {
        let (identity, _) = self.identity()?;
        let saved = self.saved_login()?;
        let relay = self.relay_target(global, saved.as_ref())?;
        let credential = match (explicit_api_key(global)?, &saved) {
            (Some(key), _) => key,
            (None, Some(saved)) => self.unseal(&identity, saved)?,
            (None, None) => {
                return Err(Failure::new(
                    Kind::General,
                    "no credential; run `cmdop login`, or pass --api-key-file FILE or set CMDOP_API_KEY",
                ));
            }
        };
        Ok(Session {
            relay,
            credential,
            identity,
        })
    }

    /// The credential sealed in `saved`.
    pub(crate) fn unseal(
        &self,
        identity: &Identity,
        saved: &SavedLogin,
    ) -> anyhow::Result<Zeroizing<String>> {
        let path = self.login_path();
        let broken = || {
            format!(
                "cannot decrypt the credential in {}; run `cmdop login` again",
                path.display()
            )
        };
        let bytes = hex::decode(&saved.sealed_credential).with_context(broken)?;
        let (nonce, sealed) = bytes.split_at_checked(12).with_context(broken)?;
        let key = identity.derive_key(KeyPurpose::ClientLoginStore);
        let cipher =
            Aes256Gcm::new_from_slice(key.as_slice()).context("login key has the wrong length")?;
        let aad = associated_data(&saved.relay, &saved.relay_fingerprint);
        let plain = Zeroizing::new(
            cipher
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: sealed,
                        aad: &aad,
                    },
                )
                .map_err(|_| anyhow::anyhow!(broken()))?,
        );
        let text = std::str::from_utf8(&plain).with_context(broken)?;
        Ok(Zeroizing::new(text.to_owned()))
    }
}

/// An API key from `--api-key-file` or `CMDOP_API_KEY`, which take precedence over the saved login.
fn explicit_api_key(global: &GlobalArgs) -> anyhow::Result<Option<Zeroizing<String>>> {
    if let Some(path) = &global.api_key_file {
        let mode = fs::metadata(path)
            .with_context(|| format!("cannot read API key file {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            bail!(
                "{} is readable by other users (mode {:o}); run `chmod 600 {}`",
                path.display(),
                mode & 0o777,
                path.display()
            );
        }
        let text = Zeroizing::new(
            fs::read_to_string(path)
                .with_context(|| format!("cannot read API key file {}", path.display()))?,
        );
        return Ok(Some(Zeroizing::new(text.trim().to_owned())));
    }
    match std::env::var("CMDOP_API_KEY") {
        Ok(key) if !key.trim().is_empty() => Ok(Some(Zeroizing::new(key.trim().to_owned()))),
        _ => Ok(None),
    }
}

fn associated_data(relay: &str, fingerprint: &str) -> Vec<u8> {
    format!("cmdop login v1\0{relay}\0{fingerprint}").into_bytes()
}

/// Writes a private file through the identity store's one implementation (atomic, 0600, directory 0700).
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    store::write_private_file(path, bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}
