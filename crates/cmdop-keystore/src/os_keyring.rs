//! The OS keyring (Secret Service on Linux) as a home for the key-encryption key, with every call bounded in time.

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use cmdop_identity::store::format::{KEY_ID_LEN, Kek};
use zeroize::Zeroizing;

/// Why the OS keyring could not store, return or delete a key-encryption key. It reaches the user inside a
/// [`StoreError`](crate::StoreError), whose message says what to do about it.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// The secret service refused or failed the call: no session bus, a locked collection, no such entry.
    #[error(transparent)]
    Backend(#[from] keyring::Error),
    /// The keyring accepted the key but read back something else, so it cannot be trusted to keep it.
    #[error("the keyring returned a different secret than was stored")]
    ReadBackMismatch,
    /// The entry does not hold a 32-byte key (something else wrote it, or it was damaged).
    #[error("the keyring entry holds {found} bytes, expected 32")]
    WrongLength {
        /// How many bytes the entry holds.
        found: usize,
    },
    /// No answer in time, as from a D-Bus peer that accepts the connection and never replies.
    #[error("no answer within {} ms", .limit.as_millis())]
    Timeout {
        /// The time limit that passed.
        limit: Duration,
    },
    /// The thread that talks to the keyring could not be started.
    #[error("cannot start the keyring thread: {reason}")]
    Thread {
        /// What the OS said.
        reason: std::io::Error,
    },
    /// The keyring thread ended without an answer (it panicked).
    #[error("the keyring call failed unexpectedly")]
    NoAnswer,
    /// This build has no OS keyring backend for this platform.
    #[error("this build has no OS keyring backend for this platform")]
    Unsupported,
}

/// The keyring service name every cmdop entry is filed under.
pub(crate) const SERVICE: &str = "cmdop";

/// The keyring user name for the KEK with `key_id`: one entry per seed file, so several config directories
/// on one machine never share or clobber a key.
pub(crate) fn entry_user(key_id: &[u8; KEY_ID_LEN]) -> String {
    format!("agent-kek-{}", data_encoding::HEXLOWER.encode(key_id))
}

/// Stores `kek` and reads it back, so a backend that accepts writes but forgets them is caught now rather
/// than at the next start.
pub(crate) fn store(
    key_id: &[u8; KEY_ID_LEN],
    kek: &Kek,
    timeout: Duration,
) -> Result<(), KeyringError> {
    let user = entry_user(key_id);
    let secret = Zeroizing::new(*kek.as_bytes());
    bounded(timeout, move || {
        let entry = backend::entry(&user)?;
        entry.set_secret(secret.as_slice())?;
        let back = Zeroizing::new(entry.get_secret()?);
        if back.as_slice() == secret.as_slice() {
            Ok(())
        } else {
            Err(KeyringError::ReadBackMismatch)
        }
    })
}

/// Fetches the KEK stored for `key_id`.
pub(crate) fn load(key_id: &[u8; KEY_ID_LEN], timeout: Duration) -> Result<Kek, KeyringError> {
    let user = entry_user(key_id);
    bounded(timeout, move || {
        let entry = backend::entry(&user)?;
        let secret = Zeroizing::new(entry.get_secret()?);
        let bytes: [u8; 32] =
            secret
                .as_slice()
                .try_into()
                .map_err(|_| KeyringError::WrongLength {
                    found: secret.len(),
                })?;
        Ok(Kek::from_bytes(bytes))
    })
}

/// Removes the entry for `key_id`; used when another process won the race to create the identity.
pub(crate) fn delete(key_id: &[u8; KEY_ID_LEN], timeout: Duration) -> Result<(), KeyringError> {
    let user = entry_user(key_id);
    bounded(timeout, move || {
        Ok(backend::entry(&user)?.delete_credential()?)
    })
}

/// Runs `f` on its own thread and gives up after `timeout`: a D-Bus peer that accepts the connection and
/// never answers must not hang the agent's start. A timed-out thread is left to finish on its own.
fn bounded<T: Send + 'static>(
    timeout: Duration,
    f: impl FnOnce() -> Result<T, KeyringError> + Send + 'static,
) -> Result<T, KeyringError> {
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name("cmdop-keyring".to_owned())
        .spawn(move || {
            // The receiver is gone only if we already timed out; then nobody wants the answer.
            let _ = tx.send(f());
        })
        .map_err(|reason| KeyringError::Thread { reason })?;
    match rx.recv_timeout(timeout) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => Err(KeyringError::Timeout { limit: timeout }),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(KeyringError::NoAnswer),
    }
}

#[cfg(any(target_os = "linux", target_os = "freebsd", target_os = "openbsd"))]
mod backend {
    /// An entry in the Secret Service, named explicitly rather than through keyring's default store, which
    /// on some platforms is a silent in-memory mock.
    pub(super) fn entry(user: &str) -> Result<keyring::Entry, super::KeyringError> {
        let credential =
            keyring::secret_service::SsCredential::new_with_target(None, super::SERVICE, user)?;
        Ok(keyring::Entry::new_with_credential(Box::new(credential)))
    }
}

#[cfg(not(any(target_os = "linux", target_os = "freebsd", target_os = "openbsd")))]
mod backend {
    /// This build only links the Secret Service backend; elsewhere keyring's default would be a mock.
    pub(super) fn entry(_user: &str) -> Result<keyring::Entry, super::KeyringError> {
        Err(super::KeyringError::Unsupported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_passes_the_answer_through() {
        assert_eq!(bounded(Duration::from_secs(5), || Ok(7)).unwrap(), 7);
        assert!(matches!(
            bounded::<()>(Duration::from_secs(5), || Err(
                KeyringError::ReadBackMismatch
            )),
            Err(KeyringError::ReadBackMismatch)
        ));
    }

    #[test]
    fn bounded_gives_up_on_a_call_that_never_returns() {
        let (_keep_open, never) = mpsc::channel::<()>();
        let started = std::time::Instant::now();
        let err = bounded(Duration::from_millis(50), move || {
            let _ = never.recv();
            Ok(())
        })
        .unwrap_err();
        assert!(
            matches!(err, KeyringError::Timeout { limit } if limit == Duration::from_millis(50)),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "no answer within 50 ms");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn bounded_reports_a_call_that_died() {
        let err = bounded::<()>(Duration::from_secs(5), || {
            panic!("a keyring backend bug, on purpose")
        })
        .unwrap_err();
        assert!(matches!(err, KeyringError::NoAnswer), "{err:?}");
        assert_eq!(err.to_string(), "the keyring call failed unexpectedly");
    }

    #[test]
    fn entry_names_are_per_key_id() {
        let mut key_id = [0u8; KEY_ID_LEN];
        key_id[0] = 0xab;
        assert_eq!(
            entry_user(&key_id),
            "agent-kek-ab000000000000000000000000000000"
        );
    }
}
