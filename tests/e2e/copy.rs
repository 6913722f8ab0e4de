//! `cmdop connect cp` from the real binaries: a directory tree both ways with modes, hostile names from the
//! machine refused, and copies cut mid-way (client killed, relay killed) that resume and end identical, with
//! never a partial file under the final name.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use cmdop_tests::{Contour, eventually, run};
use serde_json::Value;

/// A contour with machine web-1, and a scratch directory on this host (where the agent runs too).
struct Fixture {
    contour: Contour,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Self {
            contour: Contour::with_machine(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `web-1:<absolute path in the scratch directory>`: the agent runs on this machine.
    fn remote(&self, name: &str) -> String {
        format!("web-1:{}", self.path(name).display())
    }

    fn cp(&self, args: &[&str]) -> Command {
        let mut command = self
            .contour
            .cli_with_key("alice", &self.contour.member_key("prod"));
        command.args(["connect", "cp"]).args(args);
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        run(&mut self.cp(args))
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.run(&[&["--json"], args].concat());
        assert!(out.status.success(), "cp {args:?}: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn write(path: &Path, bytes: &[u8], mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Every entry under `root`: relative path, mode, and contents (files) or target (symlinks).
fn snapshot(root: &Path) -> Vec<(String, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let relative = path.strip_prefix(root).unwrap().display().to_string();
            let metadata = fs::symlink_metadata(&path).unwrap();
            if metadata.file_type().is_symlink() {
                let target = fs::read_link(&path).unwrap();
                out.push((relative, 0, target.display().to_string().into_bytes()));
            } else if metadata.is_dir() {
                out.push((relative, mode(&path), Vec::new()));
                stack.push(path);
            } else {
                out.push((relative, mode(&path), fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn part_files(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with(".cmdop-part"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_directory_tree_goes_there_and_back_with_modes_and_links() {
    let f = Fixture::new();
    let source = f.path("src");
    write(&source.join("a.txt"), b"hello\n", 0o644);
    write(&source.join("bin/run.sh"), b"#!/bin/sh\necho hi\n", 0o755);
    write(
        &source.join("deep/x/y.bin"),
        &random_bytes(3 << 20, 7),
        0o600,
    );
    write(&source.join("empty.txt"), b"", 0o640);
    fs::create_dir_all(source.join("nothing")).unwrap();
    fs::set_permissions(source.join("nothing"), fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink("../a.txt", source.join("bin/a-link")).unwrap();

    let summary = f.json(&["-r", source.to_str().unwrap(), &f.remote("there")]);
    assert_eq!(summary["files"], 4, "{summary}");
    assert_eq!(snapshot(&f.path("there")), snapshot(&source));

    let summary = f.json(&["-r", &f.remote("there"), f.path("back").to_str().unwrap()]);
    assert_eq!(summary["files"], 4, "{summary}");
    assert_eq!(snapshot(&f.path("back")), snapshot(&source));

    // Into an existing directory, a single file keeps its name; without -r a directory is refused.
    fs::create_dir(f.path("inbox")).unwrap();
    f.json(&[source.join("a.txt").to_str().unwrap(), &f.remote("inbox")]);
    assert_eq!(fs::read(f.path("inbox/a.txt")).unwrap(), b"hello\n");
    let out = f.run(&[source.to_str().unwrap(), &f.remote("inbox")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("add -r"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn hostile_names_from_the_machine_are_refused_and_writes_stay_inside() {
    let f = Fixture::new();
    let remote = f.path("remote");
    write(&remote.join("ok.txt"), b"fine", 0o644);
    write(&remote.join("bad\u{1b}[2Jname"), b"x", 0o644);
    write(&remote.join("trap/f"), b"through a symlink", 0o644);
    std::os::unix::fs::symlink("../../outside", remote.join("escape")).unwrap();
    std::os::unix::fs::symlink("/etc", remote.join("absolute")).unwrap();
    fs::create_dir_all(remote.join("sub")).unwrap();
    std::os::unix::fs::symlink("../ok.txt", remote.join("sub/up")).unwrap();
    // The destination already holds a symlink to a directory outside it where the tree has a directory.
    let outside = f.path("outside-dir");
    fs::create_dir_all(&outside).unwrap();
    let destination = f.path("dest");
    fs::create_dir_all(destination.join("remote")).unwrap();
    std::os::unix::fs::symlink(&outside, destination.join("remote/trap")).unwrap();

    let out = f.run(&[
        "-r",
        &format!("{}/", f.remote("remote")),
        destination.to_str().unwrap(),
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for name in ["bad\\u{1b}[2Jname", "escape", "absolute", "trap"] {
        assert!(
            stderr.contains(&format!("refusing \"{name}")),
            "{name}: {stderr}"
        );
    }
    assert!(stderr.contains("everything else was copied"), "{stderr}");
    let copied = destination.join("remote");
    assert_eq!(fs::read(copied.join("ok.txt")).unwrap(), b"fine");
    assert_eq!(fs::read(copied.join("sub/up")).unwrap(), b"fine");
    assert!(
        !copied.join("escape").exists() && fs::symlink_metadata(copied.join("escape")).is_err()
    );
    assert!(fs::symlink_metadata(copied.join("absolute")).is_err());
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "a write went outside"
    );
    assert!(!f.path("outside").exists());
}

/// Waits until `dir` holds a partial file of at least `len` bytes.
fn partial_reaches(dir: &Path, len: u64) {
    eventually(Duration::from_secs(60), "a partial file to grow", || {
        part_files(dir)
            .iter()
            .any(|p| fs::metadata(p).is_ok_and(|m| m.len() >= len))
            .then_some(())
    });
}

#[test]
fn a_cut_copy_resumes_and_ends_identical() {
    let mut f = Fixture::new();
    let data = random_bytes(12 << 20, 11);
    write(&f.path("big.bin"), &data, 0o640);
    fs::create_dir(f.path("up")).unwrap();
    fs::create_dir(f.path("down")).unwrap();

    // Push, client killed mid-way: the agent keeps what arrived under the partial name only.
    let mut child = f
        .cp(&[
            "--limit-rate",
            "2M",
            f.path("big.bin").to_str().unwrap(),
            &f.remote("up/"),
        ])
        .spawn()
        .unwrap();
    partial_reaches(&f.path("up"), 2 << 20);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !f.path("up/big.bin").exists(),
        "a partial file sits under the final name"
    );
    let summary = f.json(&[f.path("big.bin").to_str().unwrap(), &f.remote("up/")]);
    assert!(
        summary["resumed_bytes"].as_u64().unwrap() >= 2 << 20,
        "{summary}"
    );
    assert_eq!(fs::read(f.path("up/big.bin")).unwrap(), data);
    assert_eq!(mode(&f.path("up/big.bin")), 0o640);
    assert!(part_files(&f.path("up")).is_empty());

    // Pull, relay killed mid-way: the client keeps what arrived under the partial name only.
    let mut child = f
        .cp(&[
            "--limit-rate",
            "2M",
            &f.remote("big.bin"),
            f.path("down").to_str().unwrap(),
        ])
        .spawn()
        .unwrap();
    partial_reaches(&f.path("down"), 2 << 20);
    // Killed and started again at once: the new relay's stateless reset tells the client its connection is
    // gone on its next packet, instead of after QUIC's idle timeout.
    f.contour.restart_relay();
    assert!(
        !child.wait().unwrap().success(),
        "a cut copy must not succeed"
    );
    assert!(
        !f.path("down/big.bin").exists(),
        "a partial file sits under the final name"
    );
    let member_key = f.contour.member_key("prod");
    eventually(Duration::from_secs(60), "web-1 online again", || {
        let machines = f.contour.list("alice", &member_key, None);
        (machines.first()?["online"] == true).then_some(())
    });
    let summary = f.json(&[&f.remote("big.bin"), f.path("down").to_str().unwrap()]);
    assert!(
        summary["resumed_bytes"].as_u64().unwrap() >= 2 << 20,
        "{summary}"
    );
    assert_eq!(fs::read(f.path("down/big.bin")).unwrap(), data);
    assert_eq!(mode(&f.path("down/big.bin")), 0o640);
    assert!(part_files(&f.path("down")).is_empty());
}

#[test]
fn cp_takes_ssh_flags_and_its_errors_name_what_was_typed() {
    use std::os::unix::fs::MetadataExt as _;
    let f = Fixture::new();
    let source = f.path("tree");
    write(&source.join("a.txt"), b"a", 0o640);
    write(&source.join("sub/b.txt"), b"b", 0o600);
    // Old times, so that "kept" cannot be mistaken for "just written".
    let old = |path: &Path, seconds: i64| {
        let when = std::time::UNIX_EPOCH + Duration::from_secs(seconds as u64);
        fs::File::open(path).unwrap().set_modified(when).unwrap();
    };
    old(&source.join("a.txt"), 1_000_000_000);
    old(&source.join("sub/b.txt"), 1_100_000_000);
    old(&source.join("sub"), 1_200_000_000);
    let mtime = |path: &Path| fs::metadata(path).unwrap().mtime();

    // -R is -r; -p keeps modification times (files and directories) as well as modes, both ways.
    let out = f.run(&["-R", "-p", source.to_str().unwrap(), &f.remote("up")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(mtime(&f.path("up/a.txt")), 1_000_000_000);
    assert_eq!(mtime(&f.path("up/sub/b.txt")), 1_100_000_000);
    assert_eq!(mtime(&f.path("up/sub")), 1_200_000_000);
    assert_eq!(mode(&f.path("up/sub/b.txt")), 0o600);
    let out = f.run(&["-rp", &f.remote("up"), f.path("down").to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(mtime(&f.path("down/a.txt")), 1_000_000_000);
    assert_eq!(mtime(&f.path("down/sub")), 1_200_000_000);
    // Without -p a copy gets the time it was written.
    let out = f.run(&[
        source.join("a.txt").to_str().unwrap(),
        &f.remote("fresh.txt"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(mtime(&f.path("fresh.txt")) > 1_000_000_000);

    // A missing directory on the machine: the error names the target as typed, not a partial file.
    let target = f.remote("nonexistent/dir/file");
    let out = f.run(&[source.join("a.txt").to_str().unwrap(), &target]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&target), "{stderr}");
    assert!(!stderr.contains("cmdop-part"), "{stderr}");
    // A missing remote file is exit 1 (4 means the machine was not found).
    let out = f.run(&[&f.remote("no-such-file"), f.path("x").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no such file"),
        "{}",
        text(&out.stderr)
    );
    // A command line without a MACHINE:PATH side is a usage error.
    let out = f.run(&["a", "b"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}
