//! The encrypted seed store: `agent_keypair.bin` in a config directory, its key-encryption key (KEK) in the OS
//! keyring or in `agent_keypair.key` beside it.
//!
//! ```text
//!  config dir (0700)
//!  ├── agent_keypair.bin   magic · version · KEK location · key id · nonce · AES-256-GCM(seed)   (0600)
//!  └── agent_keypair.key   magic · version · key id · KEK      (0600, only when the keyring is not used)
//! ```
//!
//! The file formats and the owner-only file handling are `cmdop_identity::store`; this crate adds the policy
//! of where a KEK lives and the OS keyring itself. It is a crate of its own so that only the binaries that
//! keep identities (the agent and the CLI) link the keyring and its D-Bus stack: `cargo xtask layering`
//! checks that no library below them has `keyring`, `zbus` or `async-io` in its dependency graph.
//!
//! Invariants: a seed file that exists is never overwritten or replaced, whatever is wrong with it; loading
//! never creates anything; creation is create-if-absent under an exclusive lock of the directory, so racing
//! first starts agree on one identity; a key file without its seed file is an error, never the start of a new
//! identity (the seed was deleted or lost, and a new identity would be a new machine or client); the KEK
//! location is recorded in the seed file, so a later start looks in the right place or fails loudly.

mod os_keyring;

pub use os_keyring::KeyringError;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cmdop_identity::store::format::{self, FormatError, KEY_ID_LEN, Kek, KekSlot};
use cmdop_identity::store::private_file::{self, Checked};
use cmdop_identity::{Identity, Seed};
use rand_core::CryptoRngCore;

/// File name of the encrypted seed inside the config directory.
pub const SEED_FILE_NAME: &str = "agent_keypair.bin";
/// File name of the key-encryption key when it is not kept in the OS keyring.
pub const KEY_FILE_NAME: &str = "agent_keypair.key";
/// How long a keyring call may take before the keyring counts as unreachable.
pub const DEFAULT_KEYRING_TIMEOUT: Duration = Duration::from_secs(3);

/// Where a new identity's key-encryption key may be kept. Loading ignores this: it follows the location
/// recorded in the seed file.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KekBackend {
    /// The OS keyring if a secret service answers in time, else the key file (logged and reported).
    #[default]
    Auto,
    /// The OS keyring or an error; for machines where a key file beside the seed is not acceptable.
    KeyringOnly,
    /// The key file, without asking the keyring.
    FileOnly,
}

/// Where the key-encryption key of a stored identity is kept.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KekLocation {
    /// In the OS keyring.
    Keyring {
        /// Keyring service name (`cmdop`).
        service: String,
        /// Keyring user name (`agent-kek-<key id in hex>`).
        user: String,
    },
    /// In a 0600 key file beside the seed file.
    KeyFile {
        /// Path of the key file.
        path: PathBuf,
    },
}

impl fmt::Display for KekLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Keyring { service, user } => {
                write!(f, "os keyring (service {service}, entry {user})")
            }
            Self::KeyFile { path } => write!(f, "key file {}", path.display()),
        }
    }
}

/// Where a stored identity lives.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreInfo {
    /// Path of the encrypted seed file.
    pub seed_path: PathBuf,
    /// Where its key-encryption key is kept.
    pub kek_location: KekLocation,
}

/// Whether [`SeedStore::load_or_create`] made a new identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    /// No identity existed; a new one was created and stored.
    New,
    /// An identity already existed (possibly created a moment ago by a racing process) and was loaded.
    Existing,
}

/// Why the store could not load or create an identity. A file named in an error has been left untouched.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The config directory could not be created.
    #[error("cannot create config directory {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file could not be read (other than not existing).
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A new file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A secret file is accessible to group or others.
    #[error(
        "{} is accessible by group or others (mode {mode:04o}) and is refused; run `chmod 600 {}` if you trust its contents",
        path.display(),
        path.display()
    )]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A secret file belongs to another user, who could have planted it.
    #[error(
        "{} is owned by uid {owner}, not by uid {expected} that runs cmdop, and is refused because someone else may have placed it there; if it is yours, run `chown {expected} {}`",
        path.display(),
        path.display()
    )]
    WrongOwner {
        /// The file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The effective uid of this process.
        expected: u32,
    },
    /// The path exists but is not a regular file.
    #[error("{} is not a regular file; move it out of the way", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The file's bytes are not a valid seed or key file.
    #[error("{} is not a valid cmdop {kind} file: {reason}; it was left untouched (move it away only if you mean to discard this identity)", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// "seed" or "key".
        kind: &'static str,
        /// What is wrong with it (shown in the message, so not also a `source`).
        reason: FormatError,
    },
    /// Authenticated decryption failed.
    #[error(
        "cannot decrypt {} (wrong key-encryption key in the {kek_location}, or the file was modified); it was left untouched",
        seed_path.display()
    )]
    Decrypt {
        /// The seed file.
        seed_path: PathBuf,
        /// Where the key that failed came from.
        kek_location: KekLocation,
    },
    /// The seed file says its KEK is in a key file that does not exist.
    #[error(
        "{} needs its key-encryption key from {}, which is missing; restore it from a backup (a new identity is not created while the seed file exists)",
        seed_path.display(),
        key_path.display()
    )]
    KeyFileMissing {
        /// The seed file.
        seed_path: PathBuf,
        /// The missing key file.
        key_path: PathBuf,
    },
    /// The key file holds the key of a different seed file.
    #[error(
        "{} belongs to a different identity than {} (key ids differ); restore the matching pair from a backup",
        key_path.display(),
        seed_path.display()
    )]
    KeyFileMismatch {
        /// The seed file.
        seed_path: PathBuf,
        /// The key file.
        key_path: PathBuf,
    },
    /// The seed file's KEK is in the OS keyring and the keyring cannot give it back.
    #[error(
        "the key-encryption key for {} is kept in the {kek_location}, which cannot be read: {reason}; start or unlock the secret service and try again",
        seed_path.display()
    )]
    KeyringLoad {
        /// The seed file.
        seed_path: PathBuf,
        /// The keyring entry.
        kek_location: KekLocation,
        /// What the keyring said (shown in the message, so not also a `source`).
        reason: KeyringError,
    },
    /// `KekBackend::KeyringOnly` was asked for and no keyring answered.
    #[error(
        "the os keyring is not reachable ({reason}); start a secret service, or allow the key file fallback"
    )]
    KeyringUnavailable {
        /// What the keyring said (shown in the message, so not also a `source`).
        reason: KeyringError,
    },
    /// The key file is there but its seed file is not: the identity was deleted or lost, not never made.
    #[error(
        "{} is missing while its key-encryption key {} is still there, so this identity was deleted or lost rather than never created; restore {} from a backup. Only to give this machine or client a new identity on purpose (the relay then sees a new machine, and every pin of the old key must be redone), remove {} as well",
        seed_path.display(),
        key_path.display(),
        seed_path.display(),
        key_path.display()
    )]
    SeedMissing {
        /// The missing seed file.
        seed_path: PathBuf,
        /// The key file that remains.
        key_path: PathBuf,
    },
    /// The config directory could not be locked for creating an identity.
    #[error("cannot lock {} to create an identity: {source}", path.display())]
    Lock {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The seed file disappeared between losing the creation race and loading the winner's file.
    #[error("{} vanished while it was being created by another process; try again", path.display())]
    Vanished {
        /// The seed file.
        path: PathBuf,
    },
}

/// The encrypted seed store in one config directory.
#[derive(Debug, Clone)]
pub struct SeedStore {
    dir: PathBuf,
    backend: KekBackend,
    keyring_timeout: Duration,
}

impl SeedStore {
    /// A store in `dir` (for example [`default_config_dir`](cmdop_identity::store::default_config_dir)) that keeps new KEKs according to `backend`.
    /// Nothing is touched until [`load`](Self::load) or [`load_or_create`](Self::load_or_create).
    pub fn new(dir: impl Into<PathBuf>, backend: KekBackend) -> Self {
        Self {
            dir: dir.into(),
            backend,
            keyring_timeout: DEFAULT_KEYRING_TIMEOUT,
        }
    }

    /// Overrides how long a keyring call may take ([`DEFAULT_KEYRING_TIMEOUT`] by default).
    pub fn with_keyring_timeout(mut self, timeout: Duration) -> Self {
        self.keyring_timeout = timeout;
        self
    }

    /// The config directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the encrypted seed file.
    pub fn seed_path(&self) -> PathBuf {
        self.dir.join(SEED_FILE_NAME)
    }

    /// Path of the key file (used only when the KEK is not in the keyring).
    pub fn key_path(&self) -> PathBuf {
        self.dir.join(KEY_FILE_NAME)
    }

    /// Loads the stored identity; `Ok(None)` when there is no seed file. Never creates or modifies anything.
    pub fn load(&self) -> Result<Option<(Identity, StoreInfo)>, StoreError> {
        let seed_path = self.seed_path();
        let Some(bytes) = read_checked(&seed_path)? else {
            return Ok(None);
        };
        let sealed =
            format::parse_seed_file(&bytes).map_err(|e| malformed(&seed_path, "seed", e))?;
        let (kek, kek_location) = match sealed.slot() {
            KekSlot::KeyFile => (
                self.read_key_file(Some(sealed.key_id()))?,
                self.key_file_location(),
            ),
            KekSlot::Keyring => {
                let location = keyring_location(sealed.key_id());
                let kek =
                    os_keyring::load(sealed.key_id(), self.keyring_timeout).map_err(|reason| {
                        StoreError::KeyringLoad {
                            seed_path: seed_path.clone(),
                            kek_location: location.clone(),
                            reason,
                        }
                    })?;
                (kek, location)
            }
        };
        let seed = sealed.open(&kek).ok_or_else(|| StoreError::Decrypt {
            seed_path: seed_path.clone(),
            kek_location: kek_location.clone(),
        })?;
        let identity = Identity::from_seed(&seed);
        tracing::info!(
            seed_path = %seed_path.display(),
            kek = %kek_location,
            fingerprint = %identity.public_key().fingerprint(),
            "loaded the identity"
        );
        Ok(Some((
            identity,
            StoreInfo {
                seed_path,
                kek_location,
            },
        )))
    }

    /// Loads the stored identity, or creates one if there is no seed file.
    ///
    /// If the seed file exists but cannot be used, this is the same error as [`load`](Self::load): an
    /// unusable identity is never silently replaced. When several processes or threads call this at once on
    /// a fresh directory, exactly one creates the identity and the others load it.
    pub fn load_or_create<R: CryptoRngCore + ?Sized>(
        &self,
        rng: &mut R,
    ) -> Result<(Identity, StoreInfo, Created), StoreError> {
        if let Some((identity, info)) = self.load()? {
            return Ok((identity, info, Created::Existing));
        }
        private_file::ensure_dir(&self.dir).map_err(|source| StoreError::CreateDir {
            path: self.dir.clone(),
            source,
        })?;
        // Held until the new identity is complete, so that a racing start waits and then loads it, and a key
        // file seen here without its seed is never one a racing start is still writing.
        let _creating = self.lock_dir()?;
        if let Some((identity, info)) = self.load()? {
            return Ok((identity, info, Created::Existing));
        }
        if std::fs::symlink_metadata(self.key_path()).is_ok() {
            return Err(StoreError::SeedMissing {
                seed_path: self.seed_path(),
                key_path: self.key_path(),
            });
        }

        let (slot, key_id, kek) = self.provision_kek(rng)?;
        let seed = Seed::generate(rng);
        let mut nonce = [0u8; format::NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let bytes = format::seal_seed(&seed, &kek, slot, &key_id, &nonce);

        let seed_path = self.seed_path();
        let written = private_file::create_new_atomically(&seed_path, &bytes);
        if slot == KekSlot::Keyring && !matches!(written, Ok(true)) {
            // Our fresh entry encrypts nothing now; leaving it would only clutter the user's keyring.
            if let Err(reason) = os_keyring::delete(&key_id, self.keyring_timeout) {
                tracing::debug!(%reason, "could not remove an unused keyring entry");
            }
        }
        let created = written.map_err(|source| StoreError::Write {
            path: seed_path.clone(),
            source,
        })?;
        if !created {
            return match self.load()? {
                Some((identity, info)) => Ok((identity, info, Created::Existing)),
                None => Err(StoreError::Vanished { path: seed_path }),
            };
        }
        let identity = Identity::from_seed(&seed);
        let kek_location = match slot {
            KekSlot::Keyring => keyring_location(&key_id),
            KekSlot::KeyFile => self.key_file_location(),
        };
        tracing::info!(
            seed_path = %seed_path.display(),
            kek = %kek_location,
            fingerprint = %identity.public_key().fingerprint(),
            "created a new identity"
        );
        Ok((
            identity,
            StoreInfo {
                seed_path,
                kek_location,
            },
            Created::New,
        ))
    }

    /// [`load_or_create`](Self::load_or_create) with the operating system's random number generator.
    pub fn load_or_create_with_os_rng(&self) -> Result<(Identity, StoreInfo, Created), StoreError> {
        self.load_or_create(&mut rand_core::OsRng)
    }

    /// An exclusive `flock` of the config directory, released when the returned handle is dropped.
    fn lock_dir(&self) -> Result<std::fs::File, StoreError> {
        let lock = |source| StoreError::Lock {
            path: self.dir.clone(),
            source,
        };
        let dir = std::fs::File::open(&self.dir).map_err(lock)?;
        dir.lock().map_err(lock)?;
        Ok(dir)
    }

    /// Picks where the new identity's KEK lives and puts it there.
    fn provision_kek<R: CryptoRngCore + ?Sized>(
        &self,
        rng: &mut R,
    ) -> Result<(KekSlot, [u8; KEY_ID_LEN], Kek), StoreError> {
        let mut key_id = [0u8; KEY_ID_LEN];
        rng.fill_bytes(&mut key_id);
        let kek = Kek::generate(rng);

        let keyring_error = match self.backend {
            KekBackend::FileOnly => None,
            KekBackend::Auto | KekBackend::KeyringOnly => {
                match os_keyring::store(&key_id, &kek, self.keyring_timeout) {
                    Ok(()) => {
                        tracing::info!(kek = %keyring_location(&key_id), "keeping the key-encryption key in the os keyring");
                        return Ok((KekSlot::Keyring, key_id, kek));
                    }
                    Err(reason) if self.backend == KekBackend::KeyringOnly => {
                        return Err(StoreError::KeyringUnavailable { reason });
                    }
                    Err(reason) => Some(reason),
                }
            }
        };

        let key_path = self.key_path();
        let bytes = format::encode_key_file(&key_id, &kek);
        let created =
            private_file::create_new_atomically(&key_path, bytes.as_slice()).map_err(|source| {
                StoreError::Write {
                    path: key_path.clone(),
                    source,
                }
            })?;
        let (key_id, kek) = if created {
            (key_id, kek)
        } else {
            // A process that does not take the directory lock (an older cmdop) wrote a key file just now; use
            // its key so both of us encrypt under the same KEK.
            let existing = self.read_key_file_with_id()?;
            (existing.0, existing.1)
        };
        match keyring_error {
            Some(reason) => tracing::info!(
                key_file = %key_path.display(),
                %reason,
                "the os keyring is not reachable; keeping the key-encryption key in a key file instead"
            ),
            None => {
                tracing::info!(key_file = %key_path.display(), "keeping the key-encryption key in a key file")
            }
        }
        Ok((KekSlot::KeyFile, key_id, kek))
    }

    /// Reads the key file; with `expected_id`, also checks that it belongs to the seed file being loaded.
    fn read_key_file(&self, expected_id: Option<&[u8; KEY_ID_LEN]>) -> Result<Kek, StoreError> {
        let (key_id, kek) = self.read_key_file_with_id()?;
        if expected_id.is_some_and(|expected| *expected != key_id) {
            return Err(StoreError::KeyFileMismatch {
                seed_path: self.seed_path(),
                key_path: self.key_path(),
            });
        }
        Ok(kek)
    }

    fn read_key_file_with_id(&self) -> Result<([u8; KEY_ID_LEN], Kek), StoreError> {
        let key_path = self.key_path();
        let bytes = read_checked(&key_path)?.ok_or_else(|| StoreError::KeyFileMissing {
            seed_path: self.seed_path(),
            key_path: key_path.clone(),
        })?;
        format::parse_key_file(&bytes).map_err(|e| malformed(&key_path, "key", e))
    }

    fn key_file_location(&self) -> KekLocation {
        KekLocation::KeyFile {
            path: self.key_path(),
        }
    }
}

fn keyring_location(key_id: &[u8; KEY_ID_LEN]) -> KekLocation {
    KekLocation::Keyring {
        service: os_keyring::SERVICE.to_owned(),
        user: os_keyring::entry_user(key_id),
    }
}

/// Reads an owner-only file, mapping every refusal to the error the user sees.
fn read_checked(path: &Path) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>, StoreError> {
    let uid = private_file::current_uid();
    match private_file::read_owner_only(path, uid) {
        Ok(Checked::Missing) => Ok(None),
        Ok(Checked::Contents(bytes)) => Ok(Some(bytes)),
        Ok(Checked::TooOpen(mode)) => Err(StoreError::TooOpen {
            path: path.to_owned(),
            mode,
        }),
        Ok(Checked::WrongOwner(owner)) => Err(StoreError::WrongOwner {
            path: path.to_owned(),
            owner,
            expected: uid,
        }),
        Ok(Checked::NotAFile) => Err(StoreError::NotAFile {
            path: path.to_owned(),
        }),
        Err(source) => Err(StoreError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

fn malformed(path: &Path, kind: &'static str, reason: FormatError) -> StoreError {
    StoreError::Malformed {
        path: path.to_owned(),
        kind,
        reason,
    }
}
