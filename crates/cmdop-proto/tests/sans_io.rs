//! Keeps the whole protocol core sans-IO: no clock reads, sockets, files, threads, async runtime or ambient
//! RNG anywhere under `src/` (the end-to-end channel, the wire format, the operations, and the login,
//! presence and routing state machines). The dependency graph is checked too, by `cargo xtask layering`.
// Helpers outside #[test] functions unwrap too: a panic in a test harness is a test failure.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};

const FORBIDDEN: &[&str] = &[
    "Instant::now",
    "SystemTime",
    "tokio",
    "quinn",
    "std::net",
    "std::fs",
    "std::thread",
    "OsRng",
    "thread_rng",
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_core_performs_no_io_and_reads_no_clock() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&dir, &mut files);
    for path in &files {
        let text = fs::read_to_string(path).unwrap();
        for token in FORBIDDEN {
            assert!(!text.contains(token), "{} mentions {token}", path.display());
        }
    }
    for expected in [
        "e2e/channel.rs",
        "wire/frame.rs",
        "login.rs",
        "presence.rs",
        "routing.rs",
    ] {
        assert!(
            files.iter().any(|p| p.ends_with(expected)),
            "expected {expected} under {}",
            dir.display()
        );
    }
}
