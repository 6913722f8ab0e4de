//! Fuzzes the readers of the encrypted seed file (`agent_keypair.bin`) and its key file (`agent_keypair.key`)
//! through `SeedStore::load`, the one public way in: whatever the two files hold, loading returns an identity
//! or an error naming the file, never a panic, and never anything but the seed the key really decrypts.
//!
//! The input is `split ‖ seed file ‖ key file`, the first `split` bytes after the first byte going to the
//! seed file; an empty key part means no key file. The parsers are private to `cmdop-identity`, so each run
//! writes the two files (0600, in a directory of this process) and loads them.
#![no_main]

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use cmdop_identity::store::{KekBackend, SeedStore};
use libfuzzer_sys::fuzz_target;

/// Offset of the key-encryption-key location byte in a seed file (docs/identity.md).
const SLOT_OFFSET: usize = 9;
/// That byte's value for "in the OS keyring".
const SLOT_KEYRING: u8 = 1;

static DIR: LazyLock<PathBuf> = LazyLock::new(|| {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("cmdop-fuzz-identity-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .expect("cannot create the fuzz directory");
    dir
});

fn write_private(path: &Path, bytes: &[u8]) {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("cannot write a fuzz file");
    file.write_all(bytes).expect("cannot write a fuzz file");
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let (seed, key) = rest.split_at(usize::from(split).min(rest.len()));
    // A seed file naming the keyring would make every run ask the OS keyring (D-Bus, up to seconds); the
    // parsing before that question is the same for both location bytes.
    if seed.get(SLOT_OFFSET) == Some(&SLOT_KEYRING) {
        return;
    }
    let store = SeedStore::new(DIR.as_path(), KekBackend::FileOnly);
    write_private(&store.seed_path(), seed);
    if key.is_empty() {
        let _ = fs::remove_file(store.key_path());
    } else {
        write_private(&store.key_path(), key);
    }
    match store.load() {
        Ok(Some((identity, info))) => {
            // Only a whole seed file (86 bytes) and a whole key file (57 bytes) can decrypt.
            assert_eq!(
                (seed.len(), key.len()),
                (86, 57),
                "loaded an identity from files of the wrong size"
            );
            assert_eq!(info.seed_path, store.seed_path());
            let _ = identity.public_key().fingerprint().to_string();
        }
        Ok(None) => panic!("load found no seed file where one was just written"),
        Err(error) => {
            let message = error.to_string();
            assert!(!message.is_empty());
        }
    }
});
