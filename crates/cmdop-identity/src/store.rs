//! The on-disk pieces of an identity, without any policy: the byte layout of the encrypted seed file and of
//! its key file ([`format`](mod@format)), the owner-only files they are kept in ([`private_file`]), and where
//! cmdop's config directory is.
//!
//! ```text
//!  config dir (0700)
//!  ├── agent_keypair.bin   magic · version · KEK location · key id · nonce · AES-256-GCM(seed)   (0600)
//!  └── agent_keypair.key   magic · version · key id · KEK      (0600, only when the keyring is not used)
//! ```
//!
//! The store that puts these together, and decides where a key-encryption key (KEK) lives (the OS keyring or
//! the key file), is the `cmdop-keystore` crate. It is kept out of this crate so that the keyring, with its
//! D-Bus client and async runtime, is linked only by the binaries that keep identities (the agent and the
//! CLI), not by everything that merely signs or verifies.

pub mod format;
pub mod private_file;

use std::path::{Path, PathBuf};

/// The default config directory: `$XDG_CONFIG_HOME/cmdop`, else `$HOME/.config/cmdop`; `None` when neither
/// variable is set to an absolute path.
pub fn default_config_dir() -> Option<PathBuf> {
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    absolute("XDG_CONFIG_HOME")
        .or_else(|| absolute("HOME").map(|home| home.join(".config")))
        .map(|base| base.join("cmdop"))
}

/// Writes a small secret file (a saved credential, settings next to the identity): atomically, replacing any
/// previous version, mode 0600 whatever the umask, its directory created 0700. The one way cmdop writes
/// private files, so every such file gets the same care as the seed.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    private_file::replace_atomically(path, bytes)
}
