//! The OS keyring (Secret Service on Linux) as a home for the key-encryption key, with every call bounded in time.

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use zeroize::Zeroizing;

use cmdop_identity::store::format::{KEY_ID_LEN, Kek};

/// The keyring service name every cmdop entry is filed under.
pub(crate) const SERVICE: &str = "cmdop";

/// The keyring user name for the KEK with `key_id`: one entry per seed file, so several config directories
/// on one machine never share or clobber a key.
pub(crate) fn entry_user(key_id: &[u8; KEY_ID_LEN]) -> String {
    format!("agent-kek-{}", data_encoding::HEXLOWER.encode(key_id))
}

/// Stores `kek` and reads it back, so a backend that accepts writes but forgets them is caught now rather
/// than at the next start.
pub(crate) fn store(key_id: &[u8; KEY_ID_LEN], kek: &Kek, timeout: Duration) -> Result<(), String> {
    let user = entry_user(key_id);
    let secret = Zeroizing::new(*kek.as_bytes());
    bounded(timeout, move || {
        let entry = backend::entry(&user)?;
        entry
            .set_secret(secret.as_slice())
            .map_err(|e| e.to_string())?;
        let back = Zeroizing::new(entry.get_secret().map_err(|e| e.to_string())?);
        if back.as_slice() == secret.as_slice() {
            Ok(())
        } else {
            Err("the keyring returned a different secret than was stored".to_owned())
        }
    })
}

/// Fetches the KEK stored for `key_id`.
pub(crate) fn load(key_id: &[u8; KEY_ID_LEN], timeout: Duration) -> Result<Kek, String> {
    let user = entry_user(key_id);
    bounded(timeout, move || {
        let entry = backend::entry(&user)?;
        let secret = Zeroizing::new(entry.get_secret().map_err(|e| e.to_string())?);
        let bytes: [u8; 32] = secret.as_slice().try_into().map_err(|_| {
            format!(
                "the keyring entry holds {} bytes, expected 32",
                secret.len()
            )
        })?;
        Ok(Kek::from_bytes(bytes))
    })
}

/// Removes the entry for `key_id`; used when another process won the race to create the identity.
pub(crate) fn delete(key_id: &[u8; KEY_ID_LEN], timeout: Duration) -> Result<(), String> {
    let user = entry_user(key_id);
    bounded(timeout, move || {
        backend::entry(&user)?
            .delete_credential()
            .map_err(|e| e.to_string())
    })
}

/// Runs `f` on its own thread and gives up after `timeout`: a D-Bus peer that accepts the connection and
/// never answers must not hang the agent's start. A timed-out thread is left to finish on its own.
fn bounded<T: Send + 'static>(
    timeout: Duration,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name("cmdop-keyring".to_owned())
        .spawn(move || {
            // The receiver is gone only if we already timed out; then nobody wants the answer.
            let _ = tx.send(f());
        })
        .map_err(|e| format!("cannot start the keyring thread: {e}"))?;
    match rx.recv_timeout(timeout) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            Err(format!("no answer within {} ms", timeout.as_millis()))
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err("the keyring call failed unexpectedly".to_owned())
        }
    }
}

#[cfg(any(target_os = "linux", target_os = "freebsd", target_os = "openbsd"))]
mod backend {
    /// An entry in the Secret Service, named explicitly rather than through keyring's default store, which
    /// on some platforms is a silent in-memory mock.
    pub(super) fn entry(user: &str) -> Result<keyring::Entry, String> {
        let credential =
            keyring::secret_service::SsCredential::new_with_target(None, super::SERVICE, user)
                .map_err(|e| e.to_string())?;
        Ok(keyring::Entry::new_with_credential(Box::new(credential)))
    }
}

#[cfg(not(any(target_os = "linux", target_os = "freebsd", target_os = "openbsd")))]
mod backend {
    /// This build only links the Secret Service backend; elsewhere keyring's default would be a mock.
    pub(super) fn entry(_user: &str) -> Result<keyring::Entry, String> {
        Err("this build has no OS keyring backend for this platform".to_owned())
    }
}
