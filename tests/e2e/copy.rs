//! `cmdop connect cp` from the real binaries: a directory tree both ways with modes, hostile names from the
//! machine refused, copies cut mid-way (client killed, relay killed) that resume and end identical, with never
//! a partial file under the final name, and many small files over parallel streams, one of them failing.

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

/// Where `path` leads once every symlink on the way is followed: the real path of its longest existing prefix,
/// then the rest taken lexically (so a dangling symlink still shows where it points).
fn resolved(path: &Path) -> PathBuf {
    let mut pending: Vec<std::ffi::OsString> = path
        .components()
        .rev()
        .map(|c| c.as_os_str().to_owned())
        .collect();
    let mut here = PathBuf::from("/");
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        match part.to_str() {
            Some("/" | "." | "") => continue,
            Some("..") => {
                here.pop();
                continue;
            }
            _ => {}
        }
        let next = here.join(&part);
        match fs::symlink_metadata(&next) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                assert!(hops < 64, "symlink loop at {}", next.display());
                let target = fs::read_link(&next).unwrap();
                if target.is_absolute() {
                    here = PathBuf::from("/");
                }
                pending.extend(target.components().rev().map(|c| c.as_os_str().to_owned()));
            }
            _ => here = next,
        }
    }
    here
}

/// Every symlink under `root` whose resolution leaves `root`, with where it leads.
fn symlinks_leaving(root: &Path) -> Vec<String> {
    let root = fs::canonicalize(root).unwrap();
    let mut out = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let metadata = fs::symlink_metadata(&path).unwrap();
            if metadata.file_type().is_symlink() {
                let lands = resolved(&path);
                if !lands.starts_with(&root) {
                    out.push(format!("{} -> {}", path.display(), lands.display()));
                }
            } else if metadata.is_dir() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The partial-file name the CLI used before names were random: `.NAME.TAG.cmdop-part`, where TAG comes from
/// the size, modification time and mode the machine reports, all of which the machine controls.
fn predictable_part_name(name: &str, entry_size: u64, modified_ns: u64, mode: u32) -> String {
    let tag = cmdop_proto::ops::copy::version_tag(entry_size, modified_ns, mode);
    format!(".{name}.{tag:016x}.cmdop-part")
}

fn modified_ns(metadata: &fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    u64::try_from(metadata.mtime()).unwrap() * 1_000_000_000
        + u64::try_from(metadata.mtime_nsec()).unwrap()
}

/// Issue 13, hole 1, on a real disk through the real binaries: symlinks that each stay inside when read as
/// text (`a/0 -> ..`, `a/1 -> 0/..`, `a/2 -> 1/..`) chain to outside the destination, and a symlink planted
/// where the partial file of `b/f` will be opened points through that chain at a file outside.
#[test]
fn a_symlink_chain_on_the_machines_disk_cannot_lead_a_pull_outside() {
    let f = Fixture::new();
    let victim = f.path("victim");
    write(&victim, b"precious, and longer than f\n", 0o600);
    let tree = f.path("remote/tree");
    fs::create_dir_all(tree.join("a")).unwrap();
    std::os::unix::fs::symlink("..", tree.join("a/0")).unwrap();
    std::os::unix::fs::symlink("0/..", tree.join("a/1")).unwrap();
    std::os::unix::fs::symlink("1/..", tree.join("a/2")).unwrap();
    write(&tree.join("b/f"), b"owned\n", 0o755);
    let metadata = fs::metadata(tree.join("b/f")).unwrap();
    let part = predictable_part_name("f", 6, modified_ns(&metadata), 0o755);
    std::os::unix::fs::symlink("../a/2/victim", tree.join("b").join(part)).unwrap();
    let destination = f.path("dest");
    fs::create_dir(&destination).unwrap();

    let out = f.run(&[
        "-r",
        &f.remote("remote/tree"),
        destination.to_str().unwrap(),
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(
        fs::read(&victim).unwrap(),
        b"precious, and longer than f\n",
        "the pull wrote outside its destination: {stderr}"
    );
    assert_eq!(mode(&victim), 0o600, "{stderr}");
    let copied = destination.join("tree");
    assert_eq!(symlinks_leaving(&copied), Vec::<String>::new(), "{stderr}");
    assert_eq!(
        fs::read(copied.join("b/f")).unwrap(),
        b"owned\n",
        "{stderr}"
    );
    assert_eq!(mode(&copied.join("b/f")), 0o755);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refusing \"a/1\""), "{stderr}");
}

/// Issue 13, hole 1, from a scripted machine: a listing no disk would produce. The chain comes in reverse
/// order (each link dangles when it is made, so checking a link as it is created proves nothing), a partial
/// file name is planted as a symlink through that chain, a file is listed under a symlink, and a file claims
/// setuid.
#[test]
fn a_scripted_machine_cannot_lead_a_pull_outside() {
    use cmdop_tests::hostile_machine::{CopyScript, HostileMachine};
    let contour = Contour::builder().fleet("prod").start();
    let scratch = tempfile::tempdir().unwrap();
    let victim = scratch.path().join("victim");
    write(&victim, b"precious, and longer than f\n", 0o600);
    let mut script = CopyScript::new("tree")
        .dir("a")
        .symlink("a/p2", "p1/..")
        .symlink("a/p1", "up/..")
        .symlink("a/up", "..")
        .dir("b");
    script = script.file("b/f", b"owned\n", 0o4755);
    let f_entry = script.entry("b/f").clone();
    let part = predictable_part_name("f", f_entry.size, f_entry.modified_ns, f_entry.mode);
    script = script
        .symlink(&format!("b/{part}"), "../a/p2/victim")
        .file("b/f", b"owned\n", 0o4755)
        .symlink("s", "a")
        .file("s/g", b"through a symlink\n", 0o644);
    let _machine = HostileMachine::start(&contour, "evil-1", "prod", script);
    let destination = scratch.path().join("dest");
    fs::create_dir(&destination).unwrap();

    let out = run(contour
        .cli_with_key("alice", &contour.member_key("prod"))
        .args(["connect", "cp", "-r", "evil-1:tree"])
        .arg(&destination));
    let stderr = text(&out.stderr);
    assert_eq!(
        fs::read(&victim).unwrap(),
        b"precious, and longer than f\n",
        "the pull wrote outside its destination: {stderr}"
    );
    assert_eq!(mode(&victim), 0o600, "{stderr}");
    let copied = destination.join("tree");
    assert_eq!(symlinks_leaving(&copied), Vec::<String>::new(), "{stderr}");
    assert_eq!(
        fs::read(copied.join("b/f")).unwrap(),
        b"owned\n",
        "{stderr}"
    );
    assert_eq!(
        mode(&copied.join("b/f")),
        0o755,
        "setuid from the machine is dropped"
    );
    assert!(
        fs::symlink_metadata(copied.join("a/g")).is_err(),
        "{stderr}"
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refusing \"s/g\""), "{stderr}");
}

/// Catalog C1 from a machine that lies outright: names no file system could list (`..`, an absolute path, `.`,
/// the empty name, control characters) are refused one by one, nothing lands outside, the rest is copied.
#[test]
fn a_scripted_machines_impossible_names_are_refused() {
    use cmdop_tests::hostile_machine::{CopyScript, HostileMachine};
    let contour = Contour::builder().fleet("prod").start();
    let scratch = tempfile::tempdir().unwrap();
    let absolute = scratch.path().join("absolute");
    let hostile = [
        "../x",
        "..",
        ".",
        "",
        "a/../../x",
        "a//b",
        absolute.to_str().unwrap(),
        "x\u{1b}[2J",
        "new\nline",
        "nul\u{0}byte",
    ];
    let mut script = CopyScript::new("tree").dir("a");
    for name in hostile {
        script = script.file(name, b"hostile\n", 0o644);
    }
    script = script.file("a/fine", b"fine\n", 0o644);
    let _machine = HostileMachine::start(&contour, "evil-1", "prod", script);
    let destination = scratch.path().join("dest");
    fs::create_dir(&destination).unwrap();
    fs::set_permissions(&destination, fs::Permissions::from_mode(0o755)).unwrap();

    let out = run(contour
        .cli_with_key("alice", &contour.member_key("prod"))
        .args(["connect", "cp", "--json", "-r", "evil-1:tree"])
        .arg(&destination));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let refused: Vec<&str> = summary["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(refused, hostile, "{stderr}");
    assert_eq!(summary["files"], 1, "{summary}");
    assert_eq!(
        snapshot(scratch.path()),
        vec![
            ("dest".to_owned(), 0o755, Vec::new()),
            ("dest/tree".to_owned(), 0o755, Vec::new()),
            ("dest/tree/a".to_owned(), 0o755, Vec::new()),
            ("dest/tree/a/fine".to_owned(), 0o644, b"fine\n".to_vec()),
        ],
        "{stderr}"
    );
}

/// Issue 13, hole 2: someone who can write where a root agent receives a push plants a symlink at the name of
/// the directory being pushed, to turn the agent's chmod and writes onto a directory elsewhere.
#[test]
fn a_symlink_planted_at_a_pushed_directory_cannot_redirect_a_push() {
    let f = Fixture::new();
    let elsewhere = f.path("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o700)).unwrap();
    let source = f.path("src");
    write(&source.join("passwd"), b"root::0:0::/:/bin/sh\n", 0o644);
    fs::set_permissions(&source, fs::Permissions::from_mode(0o777)).unwrap();
    fs::create_dir(f.path("inbox")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, f.path("inbox/src")).unwrap();

    let out = f.run(&["-r", source.to_str().unwrap(), &f.remote("inbox/src")]);
    let stderr = text(&out.stderr);
    assert_eq!(
        mode(&elsewhere),
        0o700,
        "the agent chmod'ed through a symlink: {stderr}"
    );
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0, "{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("symbolic link"), "{stderr}");
}

/// Issue 13, hole 2: a symlink planted where the agent used to open the partial file of a push, a name it
/// computed from what the client sent, points at a file the agent must not touch.
#[test]
fn a_symlink_planted_at_a_partial_name_cannot_redirect_a_push() {
    let f = Fixture::new();
    let victim = f.path("victim");
    write(&victim, b"precious, and longer than the file\n", 0o600);
    let file = f.path("small.txt");
    write(&file, b"small\n", 0o644);
    let metadata = fs::metadata(&file).unwrap();
    let part = predictable_part_name("small.txt", 6, modified_ns(&metadata), 0o644);
    fs::create_dir(f.path("up")).unwrap();
    std::os::unix::fs::symlink(&victim, f.path("up").join(part)).unwrap();
    let out = f.run(&[file.to_str().unwrap(), &f.remote("up/")]);
    let stderr = text(&out.stderr);
    assert_eq!(
        fs::read(&victim).unwrap(),
        b"precious, and longer than the file\n",
        "the agent wrote through a planted symlink: {stderr}"
    );
    assert_eq!(mode(&victim), 0o600);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(fs::read(f.path("up/small.txt")).unwrap(), b"small\n");
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

/// A tree of many small files in nested directories, with modes, old modification times and a symlink, for
/// the parallel copies: returns how many files it has.
fn write_many_small_files(root: &Path) -> usize {
    let mut files = 0;
    for d in 0..4 {
        for e in 0..3 {
            for f in 0..12 {
                let path = root.join(format!("d{d}/e{e}/f{f:02}.bin"));
                let seed = (d * 100 + e * 10 + f) as u64;
                write(
                    &path,
                    &random_bytes(1 + (seed as usize * 397) % 9000, seed),
                    0o600 | (f as u32 % 3) << 6,
                );
                set_old_time(&path, 1_000_000_000 + seed as i64);
                files += 1;
            }
            set_old_time(
                &root.join(format!("d{d}/e{e}")),
                1_100_000_000 + (d * 10 + e) as i64,
            );
        }
        set_old_time(&root.join(format!("d{d}")), 1_200_000_000 + d as i64);
    }
    write(&root.join("big.bin"), &random_bytes(700 << 10, 99), 0o640);
    write(&root.join("empty"), b"", 0o644);
    files += 2;
    std::os::unix::fs::symlink("d1/e2/f03.bin", root.join("link")).unwrap();
    std::os::unix::fs::symlink("../../big.bin", root.join("d0/e0/up")).unwrap();
    set_old_time(root, 1_300_000_000);
    files
}

fn set_old_time(path: &Path, seconds: i64) {
    let when = std::time::UNIX_EPOCH + Duration::from_secs(seconds as u64);
    fs::File::open(path).unwrap().set_modified(when).unwrap();
}

/// Every file's and directory's modification time under `root` (symlinks' own times are not copied).
fn times(root: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let metadata = fs::symlink_metadata(&path).unwrap();
            if metadata.file_type().is_symlink() {
                continue;
            }
            if metadata.is_dir() {
                stack.push(path.clone());
            }
            let relative = path.strip_prefix(root).unwrap().display().to_string();
            out.push((relative, modified_ns(&metadata)));
        }
    }
    out.push((String::new(), modified_ns(&fs::metadata(root).unwrap())));
    out.sort();
    out
}

/// Many small files over several streams at once, both ways: every byte, mode, symlink and (with -p)
/// modification time arrives, directories included, and the totals count every file once.
#[test]
fn many_small_files_go_there_and_back_over_parallel_streams() {
    let f = Fixture::new();
    let source = f.path("src");
    let files = write_many_small_files(&source);

    for parallel in ["4", "16"] {
        let there = format!("there-{parallel}");
        let back = f.path(&format!("back-{parallel}"));
        let summary = f.json(&[
            "-rp",
            "--parallel",
            parallel,
            source.to_str().unwrap(),
            &f.remote(&there),
        ]);
        assert_eq!(summary["files"], files, "{summary}");
        assert_eq!(
            snapshot(&f.path(&there)),
            snapshot(&source),
            "--parallel {parallel}"
        );
        assert_eq!(
            times(&f.path(&there)),
            times(&source),
            "--parallel {parallel}"
        );

        let summary = f.json(&[
            "-rp",
            "--parallel",
            parallel,
            &f.remote(&there),
            back.to_str().unwrap(),
        ]);
        assert_eq!(summary["files"], files, "{summary}");
        assert_eq!(snapshot(&back), snapshot(&source), "--parallel {parallel}");
        assert_eq!(times(&back), times(&source), "--parallel {parallel}");
    }

    // Several single files at once, into an existing directory, each keeping its name.
    fs::create_dir(f.path("inbox")).unwrap();
    let singles: Vec<String> = (0..12)
        .map(|f_| {
            source
                .join(format!("d2/e1/f{f_:02}.bin"))
                .display()
                .to_string()
        })
        .collect();
    let mut args: Vec<&str> = vec!["--parallel", "6"];
    args.extend(singles.iter().map(String::as_str));
    let inbox = f.remote("inbox");
    args.push(&inbox);
    let summary = f.json(&args);
    assert_eq!(summary["files"], 12, "{summary}");
    for single in &singles {
        let name = Path::new(single).file_name().unwrap();
        assert_eq!(
            fs::read(f.path("inbox").join(name)).unwrap(),
            fs::read(single).unwrap()
        );
    }

    // Out of range is a usage error that says the range.
    let out = f.run(&[
        "-r",
        "--parallel",
        "17",
        source.to_str().unwrap(),
        &f.remote("x"),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("1..=16"),
        "{}",
        text(&out.stderr)
    );
}

/// One stream's file fails (a directory stands at its name on the machine): the run stops, the failure names
/// that file, and every file under its final name is complete and identical; removing the obstacle and running
/// again finishes the copy.
#[test]
fn a_failure_on_one_of_the_parallel_streams_stops_the_copy_and_leaves_no_half_file() {
    let f = Fixture::new();
    let source = f.path("src");
    for i in 0..400 {
        write(
            &source.join(format!("d{}/f{i:03}", i / 100)),
            &random_bytes(2000 + i, i as u64),
            0o644,
        );
    }
    let blocker = f.path("dst/src/d0/f002");
    fs::create_dir_all(blocker.join("inside")).unwrap();

    let out = f.run(&[
        "-r",
        "--parallel",
        "8",
        source.to_str().unwrap(),
        &f.remote("dst/"),
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:", f.remote("dst/src/d0/f002"))),
        "{stderr}"
    );
    assert!(stderr.contains("in the way"), "{stderr}");
    assert!(!stderr.contains("cmdop-part"), "{stderr}");
    let mut landed = 0;
    for entry in snapshot(&f.path("dst/src")) {
        let (relative, _, contents) = entry;
        let path = f.path("dst/src").join(&relative);
        if relative.ends_with(".cmdop-part") || path.is_dir() {
            continue;
        }
        assert_eq!(
            contents,
            fs::read(source.join(&relative)).unwrap(),
            "{relative} is not whole"
        );
        landed += 1;
    }
    assert!(
        landed < 200,
        "the other streams went on after the failure: {landed} files landed"
    );

    fs::remove_dir_all(&blocker).unwrap();
    let summary = f.json(&[
        "-r",
        "--parallel",
        "8",
        source.to_str().unwrap(),
        &f.remote("dst/"),
    ]);
    assert_eq!(summary["files"], 400, "{summary}");
    // The partial files the cut streams left were resumed and renamed: none is left over.
    assert_eq!(snapshot(&f.path("dst/src")), snapshot(&source));
}
