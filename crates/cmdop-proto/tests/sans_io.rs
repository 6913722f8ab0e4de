//! Keeps the end-to-end channel sans-IO: no clock reads, sockets, files, threads, async runtime or ambient RNG.

use std::fs;
use std::path::Path;

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

#[test]
fn e2e_module_performs_no_io_and_reads_no_clock() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/e2e");
    let mut checked = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = fs::read_to_string(&path).unwrap();
        for token in FORBIDDEN {
            assert!(!text.contains(token), "{} mentions {token}", path.display());
        }
        checked += 1;
    }
    assert!(
        checked >= 4,
        "expected the e2e sources in {}",
        dir.display()
    );
}
