//! The encrypted seed store on real files: permissions, tampering, wrong keys, umask, keyring fallback and
//! racing first starts (threads and processes).
//!
//! Tests that need a process of their own (umask is process-wide; the keyring is reached through the
//! environment) re-run this test binary with `child_process_entry` selected and parameters in `CMDOP_STORE_TEST_*`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use cmdop_identity::{Identity, Seed};
use cmdop_keystore::{
    Created, KEY_FILE_NAME, KekBackend, KekLocation, SEED_FILE_NAME, SeedStore, StoreError,
};
use rand_core::OsRng;

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .expect("the file under test exists")
        .permissions()
        .mode()
        & 0o7777
}

fn file_store(dir: &Path) -> SeedStore {
    SeedStore::new(dir, KekBackend::FileOnly)
}

/// A fresh store with one identity in it; returns the directory guard and the store.
fn created() -> (tempfile::TempDir, SeedStore) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let store = file_store(&tmp.path().join("cmdop"));
    let (_, _, created) = store
        .load_or_create(&mut OsRng)
        .expect("a fresh store creates an identity");
    assert_eq!(created, Created::New);
    (tmp, store)
}

#[test]
fn creates_once_then_loads_the_same_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nested").join("cmdop");
    let store = file_store(&dir);
    assert!(store.load().unwrap().is_none());
    assert!(!dir.exists(), "load must not create anything");

    let (identity, info, created) = store.load_or_create(&mut OsRng).unwrap();
    assert_eq!(created, Created::New);
    assert_eq!(info.seed_path, dir.join(SEED_FILE_NAME));
    assert_eq!(
        info.kek_location,
        KekLocation::KeyFile {
            path: dir.join(KEY_FILE_NAME)
        }
    );
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(SEED_FILE_NAME)), 0o600);
    assert_eq!(mode(&dir.join(KEY_FILE_NAME)), 0o600);
    assert_eq!(fs::metadata(dir.join(SEED_FILE_NAME)).unwrap().len(), 86);
    let leftovers: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        2,
        "no temp files left behind: {leftovers:?}"
    );

    let (again, info_again, created_again) = store.load_or_create(&mut OsRng).unwrap();
    assert_eq!(created_again, Created::Existing);
    assert_eq!(again.public_key(), identity.public_key());
    assert_eq!(info_again, info);
    let (loaded, _) = store.load().unwrap().unwrap();
    assert_eq!(loaded.public_key(), identity.public_key());
}

/// Identity files written before the store moved out of cmdop-identity must keep opening: the worked example
/// of docs/identity.md (seed 00..1f, KEK 20..3f in the key file), laid down as files the way the old store left
/// them, loads to the key that seed gives (computed independently with Python's `cryptography`).
#[test]
fn an_existing_seed_and_key_file_pair_still_opens() {
    const SEED_FILE_HEX: &str = "434d444f5049440a0102404142434445464748494a4b4c4d4e4f505152535455565758595a5b\
        b1a1aa11352a710a3c06001161048da0ccfd5d2c6ce36f17bae5c241ac173e26cf19d34368d6bce52d82db1aa7773f6d";
    const KEY_FILE_HEX: &str = "434d444f504b450a01404142434445464748494a4b4c4d4e4f\
        202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f";
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cmdop");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    for (name, hex_bytes) in [
        (SEED_FILE_NAME, SEED_FILE_HEX),
        (KEY_FILE_NAME, KEY_FILE_HEX),
    ] {
        let path = dir.join(name);
        fs::write(&path, hex::decode(hex_bytes).unwrap()).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    }
    let seed_before = fs::read(dir.join(SEED_FILE_NAME)).unwrap();

    for backend in [
        KekBackend::Auto,
        KekBackend::FileOnly,
        KekBackend::KeyringOnly,
    ] {
        let (identity, info) = SeedStore::new(&dir, backend).load().unwrap().unwrap();
        assert_eq!(
            identity.public_key().to_string(),
            "ed25519:A6EHv_POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg"
        );
        assert_eq!(
            identity.public_key(),
            Identity::from_seed(&Seed::from_bytes(std::array::from_fn(|i| i as u8))).public_key()
        );
        assert_eq!(
            info.kek_location,
            KekLocation::KeyFile {
                path: dir.join(KEY_FILE_NAME)
            },
            "{backend:?}: loading follows the location in the file, not the policy"
        );
    }
    let (_, _, created) = file_store(&dir).load_or_create(&mut OsRng).unwrap();
    assert_eq!(created, Created::Existing);
    assert_eq!(fs::read(dir.join(SEED_FILE_NAME)).unwrap(), seed_before);
}

#[test]
fn group_or_world_access_is_refused_with_the_fix() {
    for (file, bad_mode) in [
        (SEED_FILE_NAME, 0o644),
        (SEED_FILE_NAME, 0o602),
        (KEY_FILE_NAME, 0o640),
    ] {
        let (_tmp, store) = created();
        let path = store.dir().join(file);
        fs::set_permissions(&path, fs::Permissions::from_mode(bad_mode)).unwrap();
        let before = fs::read(store.seed_path()).unwrap();
        for err in [
            store.load().unwrap_err(),
            store.load_or_create(&mut OsRng).unwrap_err(),
        ] {
            assert!(
                matches!(err, StoreError::TooOpen { .. }),
                "{file} {bad_mode:o}: {err:?}"
            );
            let message = err.to_string();
            assert!(
                message.contains(&format!("chmod 600 {}", path.display())),
                "{message}"
            );
            assert!(message.contains(&format!("{bad_mode:04o}")), "{message}");
        }
        assert_eq!(
            fs::read(store.seed_path()).unwrap(),
            before,
            "the seed file must not change"
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(
            store.load().unwrap().is_some(),
            "fixing the mode fixes the load"
        );
    }
}

#[test]
fn tampered_seed_file_is_refused_and_left_untouched() {
    type Tamper = fn(&mut Vec<u8>);
    let cases: [(&str, Tamper, &str); 5] = [
        (
            "flipped ciphertext bit",
            |b| b[50] ^= 0x10,
            "cannot decrypt",
        ),
        ("flipped tag bit", |b| b[85] ^= 0x01, "cannot decrypt"),
        ("flipped nonce bit", |b| b[30] ^= 0x80, "cannot decrypt"),
        (
            "truncated",
            |b| b.truncate(60),
            "it is 60 bytes long, expected 86",
        ),
        (
            "not ours",
            |b| *b = b"-----BEGIN OPENSSH PRIVATE KEY-----\n".to_vec(),
            "magic bytes",
        ),
    ];
    for (name, tamper, expected) in cases {
        let (_tmp, store) = created();
        let mut bytes = fs::read(store.seed_path()).unwrap();
        tamper(&mut bytes);
        fs::write(store.seed_path(), &bytes).unwrap();
        for err in [
            store.load().unwrap_err(),
            store.load_or_create(&mut OsRng).unwrap_err(),
        ] {
            let message = err.to_string();
            assert!(message.contains(expected), "{name}: {message}");
            assert!(
                message.contains(&store.seed_path().display().to_string()),
                "{name}: {message}"
            );
        }
        assert_eq!(
            fs::read(store.seed_path()).unwrap(),
            bytes,
            "{name}: the file must be left byte-identical"
        );
    }
}

#[test]
fn unsupported_version_is_named() {
    let (_tmp, store) = created();
    let mut bytes = fs::read(store.seed_path()).unwrap();
    bytes[8] = 9;
    fs::write(store.seed_path(), &bytes).unwrap();
    let message = store.load().unwrap_err().to_string();
    assert!(
        message.contains("format version 9 is not supported"),
        "{message}"
    );
}

#[test]
fn wrong_kek_is_refused_and_nothing_is_replaced() {
    let (_tmp, store) = created();
    let seed_before = fs::read(store.seed_path()).unwrap();
    let mut key = fs::read(store.key_path()).unwrap();
    key[40] ^= 0xff; // inside the 32-byte KEK at offset 25
    fs::write(store.key_path(), &key).unwrap();
    for err in [
        store.load().unwrap_err(),
        store.load_or_create(&mut OsRng).unwrap_err(),
    ] {
        assert!(matches!(err, StoreError::Decrypt { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("cannot decrypt"), "{message}");
        assert!(message.contains("wrong key-encryption key"), "{message}");
        assert!(
            message.contains(&store.key_path().display().to_string()),
            "{message}"
        );
    }
    assert_eq!(fs::read(store.seed_path()).unwrap(), seed_before);
    assert_eq!(fs::read(store.key_path()).unwrap(), key);
}

#[test]
fn missing_or_foreign_key_file_is_refused() {
    let (_tmp, store) = created();
    let (_tmp2, other) = created();
    let seed_before = fs::read(store.seed_path()).unwrap();

    fs::copy(other.key_path(), store.key_path()).unwrap();
    let err = store.load_or_create(&mut OsRng).unwrap_err();
    assert!(matches!(err, StoreError::KeyFileMismatch { .. }), "{err:?}");
    assert!(
        err.to_string().contains("belongs to a different identity"),
        "{err}"
    );

    fs::remove_file(store.key_path()).unwrap();
    let err = store.load_or_create(&mut OsRng).unwrap_err();
    assert!(matches!(err, StoreError::KeyFileMissing { .. }), "{err:?}");
    assert!(err.to_string().contains("which is missing"), "{err}");
    assert_eq!(fs::read(store.seed_path()).unwrap(), seed_before);
    assert!(
        !store.key_path().exists(),
        "a missing key is never regenerated for an existing seed file"
    );
}

#[test]
fn seed_path_that_is_a_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = file_store(tmp.path());
    fs::create_dir(store.seed_path()).unwrap();
    let err = store.load_or_create(&mut OsRng).unwrap_err();
    assert!(err.to_string().contains("is not a regular file"), "{err}");
}

/// Issue 13, hole 10: deleting the seed file while its key file stays used to create a new identity silently
/// (encrypted under the old key), and so a new machine or client. An identity whose key-encryption key still
/// exists but whose seed is missing is an error, and nothing is written.
#[test]
fn a_key_file_without_its_seed_is_an_error_not_a_new_identity() {
    let (_tmp, store) = created();
    let key_before = fs::read(store.key_path()).unwrap();
    fs::remove_file(store.seed_path()).unwrap();
    for _ in 0..2 {
        let err = store.load_or_create(&mut OsRng).unwrap_err().to_string();
        assert!(
            err.contains(&store.seed_path().display().to_string())
                && err.contains(&store.key_path().display().to_string())
                && err.contains("restore"),
            "{err}"
        );
        assert!(!store.seed_path().exists(), "a new seed file was written");
        assert_eq!(fs::read(store.key_path()).unwrap(), key_before);
    }
    assert!(store.load().unwrap().is_none());
    // Removing the key file as well is how a person asks for a new identity on purpose.
    fs::remove_file(store.key_path()).unwrap();
    let (_, _, created) = store.load_or_create(&mut OsRng).unwrap();
    assert_eq!(created, Created::New);
}

#[test]
fn racing_threads_end_with_one_identity() {
    for _ in 0..5 {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cmdop");
        let barrier = Arc::new(Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (dir, barrier) = (dir.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let (identity, _, created) =
                        file_store(&dir).load_or_create(&mut OsRng).unwrap();
                    (identity.public_key(), created)
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(
            results.iter().all(|(key, _)| *key == results[0].0),
            "{results:?}"
        );
        assert_eq!(
            results.iter().filter(|(_, c)| *c == Created::New).count(),
            1,
            "{results:?}"
        );
        assert_eq!(
            file_store(&dir).load().unwrap().unwrap().0.public_key(),
            results[0].0
        );
    }
}

/// Runs this test binary's `child_process_entry` with the given store parameters.
fn child(
    dir: &Path,
    backend: &str,
    extra_env: &[(&str, &str)],
    shell_prefix: Option<&str>,
) -> Command {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    let args = [
        "--exact",
        "child_process_entry",
        "--nocapture",
        "--test-threads=1",
    ];
    let mut command = match shell_prefix {
        None => Command::new(&exe),
        Some(prefix) => {
            let mut sh = Command::new("/bin/sh");
            sh.arg("-c")
                .arg(format!("{prefix}; exec \"$0\" \"$@\""))
                .arg(&exe);
            sh
        }
    };
    command
        .args(args)
        .env("CMDOP_STORE_TEST_CHILD", dir)
        .env("CMDOP_STORE_TEST_BACKEND", backend)
        // A bus address that does not exist, so the result does not depend on the desktop running the tests.
        .env(
            "DBUS_SESSION_BUS_ADDRESS",
            "unix:path=/nonexistent/cmdop-test-bus",
        );
    for (key, value) in extra_env {
        command.env(key, value);
    }
    command
}

/// The `RESULT <created> <public key> <kek kind>` or `ERROR <message>` line a child printed.
fn child_result(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // libtest prints "test child_process_entry ... " on the same line, before our output.
    stdout
        .lines()
        .find_map(|l| {
            l.find("RESULT ")
                .or_else(|| l.find("ERROR "))
                .map(|at| l[at..].trim_end().to_owned())
        })
        .unwrap_or_else(|| panic!("child printed no result: {stdout}"))
}

#[test]
fn umask_000_still_creates_owner_only_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fresh").join("cmdop");
    let output = child(&dir, "file", &[], Some("umask 000"))
        .output()
        .unwrap();
    assert!(
        child_result(&output).starts_with("RESULT New "),
        "{}",
        child_result(&output)
    );
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(SEED_FILE_NAME)), 0o600);
    assert_eq!(mode(&dir.join(KEY_FILE_NAME)), 0o600);
}

#[test]
fn racing_processes_end_with_one_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cmdop");
    let go = tmp.path().join("go");
    let go_str = go.to_str().unwrap();
    // Auto on a machine without a secret service: every process tries the keyring, falls back to the key
    // file, and they must still agree on one KEK and one seed.
    let children: Vec<_> = (0..6)
        .map(|_| {
            let mut command = child(&dir, "auto", &[("CMDOP_STORE_TEST_GO", go_str)], None);
            command
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Let every child get as far as waiting for the start signal, then release them together.
    std::thread::sleep(Duration::from_millis(300));
    fs::write(&go, b"").unwrap();
    let results: Vec<String> = children
        .into_iter()
        .map(|c| child_result(&c.wait_with_output().unwrap()))
        .collect();
    let keys: Vec<&str> = results
        .iter()
        .map(|r| r.split(' ').nth(2).unwrap_or("?"))
        .collect();
    assert!(keys.iter().all(|k| *k == keys[0]), "{results:#?}");
    assert_eq!(
        results
            .iter()
            .filter(|r| r.starts_with("RESULT New "))
            .count(),
        1,
        "{results:#?}"
    );
    assert!(
        results.iter().all(|r| r.ends_with(" key_file")),
        "{results:#?}"
    );
    let (identity, _) = file_store(&dir).load().unwrap().unwrap();
    assert_eq!(identity.public_key().to_string(), keys[0]);
}

#[test]
fn auto_falls_back_to_the_key_file_quickly_when_no_keyring_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cmdop");
    let started = Instant::now();
    let output = child(&dir, "auto", &[], None).output().unwrap();
    assert!(
        child_result(&output).starts_with("RESULT New ")
            && child_result(&output).ends_with(" key_file")
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "fallback took {:?}",
        started.elapsed()
    );
}

/// Catalog K2, first case: no session bus at all (`DBUS_SESSION_BUS_ADDRESS` and `XDG_RUNTIME_DIR` unset, as
/// under a service manager). The key file is used, the fallback is logged with its reason, nothing panics, and
/// no in-memory stand-in keyring (keyring's mock) pretends to keep the key.
#[test]
fn auto_without_any_session_bus_uses_the_key_file_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cmdop");
    let mut command = child(&dir, "auto", &[("CMDOP_STORE_TEST_LOG", "1")], None);
    command
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("DISPLAY");
    let output = command.output().unwrap();
    let result = child_result(&output);
    assert!(
        result.starts_with("RESULT New ") && result.ends_with(" key_file"),
        "{result}"
    );
    let log = String::from_utf8_lossy(&output.stdout);
    assert!(
        log.contains(
            "the os keyring is not reachable; keeping the key-encryption key in a key file instead"
        ),
        "{log}"
    );
    assert!(dir.join(KEY_FILE_NAME).is_file());
    // A second start finds the key where the seed file says it is, again without a keyring.
    let result = child_result(&command.output().unwrap());
    assert!(
        result.starts_with("RESULT Existing ") && result.ends_with(" key_file"),
        "{result}"
    );
}

/// Catalog K1, "no torn writes": readers racing a creation see no identity or the whole one, never a part.
#[test]
fn readers_racing_a_creation_never_see_a_torn_file() {
    for _ in 0..20 {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cmdop");
        fs::create_dir(&dir).unwrap();
        let barrier = Arc::new(Barrier::new(5));
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let (dir, barrier) = (dir.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let mut seen = None;
                    for _ in 0..200 {
                        match file_store(&dir).load() {
                            Ok(None) => {}
                            Ok(Some((identity, _))) => seen = Some(identity.public_key()),
                            Err(err) => panic!("a reader saw a torn identity: {err}"),
                        }
                    }
                    seen
                })
            })
            .collect();
        barrier.wait();
        let (created, _, _) = file_store(&dir).load_or_create(&mut OsRng).unwrap();
        for reader in readers {
            if let Some(seen) = reader.join().unwrap() {
                assert_eq!(seen, created.public_key());
            }
        }
    }
}

#[test]
fn a_silent_keyring_cannot_hang_creation() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cmdop");
    // A "bus" that accepts connections and never says a word.
    let socket = tmp.path().join("silent-bus");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let _accepting = std::thread::spawn(move || {
        let held: Vec<_> = listener.incoming().take(8).collect();
        std::thread::sleep(Duration::from_secs(30));
        drop(held);
    });
    let address = format!("unix:path={}", socket.display());
    let started = Instant::now();
    let output = child(
        &dir,
        "auto",
        &[
            ("DBUS_SESSION_BUS_ADDRESS", &address),
            ("CMDOP_STORE_TEST_TIMEOUT_MS", "500"),
        ],
        None,
    )
    .output()
    .unwrap();
    let result = child_result(&output);
    assert!(
        result.starts_with("RESULT New ") && result.ends_with(" key_file"),
        "{result}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn keyring_only_without_a_keyring_fails_clearly_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cmdop");
    let result = child_result(&child(&dir, "keyring", &[], None).output().unwrap());
    assert!(
        result.starts_with("ERROR the os keyring is not reachable"),
        "{result}"
    );
    assert!(!dir.join(SEED_FILE_NAME).exists() && !dir.join(KEY_FILE_NAME).exists());
}

#[test]
fn keyring_held_kek_that_cannot_be_reached_is_an_error_not_a_new_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cmdop");
    file_store(&dir).load_or_create(&mut OsRng).unwrap();
    // Rewrite the location byte to "keyring", as a file created on a desktop and copied here would say.
    let seed_path = dir.join(SEED_FILE_NAME);
    let mut bytes = fs::read(&seed_path).unwrap();
    bytes[9] = 1;
    fs::write(&seed_path, &bytes).unwrap();
    let result = child_result(&child(&dir, "auto", &[], None).output().unwrap());
    assert!(
        result.starts_with("ERROR the key-encryption key for"),
        "{result}"
    );
    assert!(
        result.contains("is kept in the os keyring (service cmdop, entry agent-kek-"),
        "{result}"
    );
    assert_eq!(
        fs::read(&seed_path).unwrap(),
        bytes,
        "the seed file must be left as it was"
    );
}

/// Not a test of its own: the body of the child processes above. Does nothing unless run by them.
#[test]
fn child_process_entry() {
    let Some(dir) = std::env::var_os("CMDOP_STORE_TEST_CHILD").map(PathBuf::from) else {
        return;
    };
    if let Some(go) = std::env::var_os("CMDOP_STORE_TEST_GO").map(PathBuf::from) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !go.exists() {
            assert!(Instant::now() < deadline, "start signal never came");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let backend = match std::env::var("CMDOP_STORE_TEST_BACKEND").as_deref() {
        Ok("file") => KekBackend::FileOnly,
        Ok("keyring") => KekBackend::KeyringOnly,
        _ => KekBackend::Auto,
    };
    if std::env::var_os("CMDOP_STORE_TEST_LOG").is_some() {
        // Logs to stdout, which the parent reads (libtest captures nothing under --nocapture).
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stdout)
            .with_ansi(false)
            .try_init();
    }
    let mut store = SeedStore::new(&dir, backend);
    if let Ok(ms) = std::env::var("CMDOP_STORE_TEST_TIMEOUT_MS") {
        store = store.with_keyring_timeout(Duration::from_millis(ms.parse().unwrap()));
    }
    match store.load_or_create(&mut OsRng) {
        Ok((identity, info, created)) => {
            let kind = match info.kek_location {
                KekLocation::KeyFile { .. } => "key_file",
                _ => "keyring",
            };
            println!("RESULT {created:?} {} {kind}", identity.public_key());
        }
        Err(err) => println!("ERROR {err}"),
    }
}

/// Hands out OS randomness and remembers every byte, so the test knows all secrets the store generated.
struct RecordingRng(Vec<u8>);

impl rand_core::RngCore for RecordingRng {
    fn next_u32(&mut self) -> u32 {
        rand_core::impls::next_u32_via_fill(self)
    }

    fn next_u64(&mut self) -> u64 {
        rand_core::impls::next_u64_via_fill(self)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        rand_core::RngCore::fill_bytes(&mut OsRng, dest);
        self.0.extend_from_slice(dest);
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for RecordingRng {}

/// A log sink shared with the test.
#[derive(Clone, Default)]
struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .expect("no test thread panicked while logging")
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn secrets_never_reach_the_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let store = file_store(&tmp.path().join("cmdop"));
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let mut rng = RecordingRng(Vec::new());
    tracing::subscriber::with_default(subscriber, || {
        let (identity, _, _) = store.load_or_create(&mut rng).unwrap();
        let (loaded, _) = store.load().unwrap().unwrap();
        tracing::info!(?identity, ?loaded, "debug forms");
        // An error path too: a wrong KEK.
        let mut key = fs::read(store.key_path()).unwrap();
        key[40] ^= 1;
        fs::write(store.key_path(), &key).unwrap();
        let err = store.load().unwrap_err();
        tracing::error!(?err, "load failed: {err}");
    });
    let logs = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("created a new identity") && logs.contains("loaded the identity"),
        "{logs}"
    );
    // Key id, KEK, seed and nonce: every 8-byte stretch of them, in hex, must be absent.
    assert_eq!(
        rng.0.len(),
        16 + 32 + 32 + 12,
        "the store drew key id, KEK, seed and nonce"
    );
    for window in rng.0.windows(8) {
        let hex = hex::encode(window);
        assert!(
            !logs.contains(&hex),
            "{hex} from the generated secrets appears in the logs:\n{logs}"
        );
    }
}
