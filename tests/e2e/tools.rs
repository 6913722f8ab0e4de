//! The tools people already use, driven through cmdop as they would drive them through ssh: rsync and git with
//! `cmdop rsh`, a tar pipe through `exec`, ssh itself through `connect proxy` (and `cmdop ssh-config`) to a
//! real sshd, and one command on twenty machines by label.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cmdop_tests::sshd::Sshd;
use cmdop_tests::{Contour, Daemon, bin_dir, online_id, run, run_ok};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The words of `cmdop …` for client `client` with the member key and the relay's flags, without a
/// subcommand. A first contact is pinned (`--accept-new`), as a script's would be.
fn cmdop_words(c: &Contour, client: &str) -> Vec<String> {
    let mut words = rsh_words(c, client);
    words.truncate(words.len() - 3);
    words.push("--accept-new".to_owned());
    words
}

/// The words of `cmdop … rsh` for client `client` with the member key: what `rsync -e` and `GIT_SSH_COMMAND`
/// are given (no word has a space: the paths are under a temporary directory and target/). A first contact
/// is pinned the way an ssh user says it: `-o StrictHostKeyChecking=accept-new`.
fn rsh_words(c: &Contour, client: &str) -> Vec<String> {
    let mut words = vec![bin_dir().join("cmdop").display().to_string()];
    words.extend([
        "--config-dir".to_owned(),
        c.root
            .path()
            .join("clients")
            .join(client)
            .display()
            .to_string(),
        "--relay".to_owned(),
        c.address.clone(),
        "--relay-fingerprint".to_owned(),
        c.fingerprint.clone(),
        "--api-key-file".to_owned(),
        c.member_key("prod").display().to_string(),
        "rsh".to_owned(),
        "-o".to_owned(),
        "StrictHostKeyChecking=accept-new".to_owned(),
    ]);
    for word in &words {
        assert!(!word.contains(' '), "{word:?} would be split by rsync -e");
    }
    words
}

/// What a tree holds, for comparing two: per relative path its kind, mode, mtime (seconds) and content digest
/// (a symlink's target).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (char, u32, i64, String)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(relative) = stack.pop() {
        for entry in fs::read_dir(root.join(&relative)).unwrap() {
            let entry = entry.unwrap();
            let path = relative.join(entry.file_name());
            let meta = fs::symlink_metadata(entry.path()).unwrap();
            let (kind, content) = if meta.file_type().is_symlink() {
                (
                    'l',
                    fs::read_link(entry.path()).unwrap().display().to_string(),
                )
            } else if meta.is_dir() {
                stack.push(path.clone());
                ('d', String::new())
            } else {
                (
                    'f',
                    hex::encode(Sha256::digest(fs::read(entry.path()).unwrap())),
                )
            };
            let mtime = if kind == 'd' { 0 } else { meta.mtime() };
            out.insert(path, (kind, meta.mode() & 0o7777, mtime, content));
        }
    }
    out
}

/// A tree of mixed files: empty, small, 1 MiB, executable, nested, a symlink.
fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("sub/deeper")).unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("small.txt"), b"hello over the contour\n").unwrap();
    let big: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(root.join("sub/big.bin"), &big).unwrap();
    fs::write(root.join("sub/deeper/run.sh"), b"#!/bin/sh\necho ran\n").unwrap();
    fs::set_permissions(
        root.join("sub/deeper/run.sh"),
        fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    std::os::unix::fs::symlink("sub/big.bin", root.join("link")).unwrap();
}

fn rsync(c: &Contour, args: &[&str]) -> Output {
    let output = Command::new("rsync")
        .arg("-e")
        .arg(rsh_words(c, "alice").join(" "))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run rsync (`cargo xtask ci` installs it)");
    assert!(
        output.status.success(),
        "rsync {args:?}: {}\n{}",
        output.status,
        text(&output.stderr)
    );
    output
}

#[test]
fn rsync_copies_a_tree_and_then_only_what_changed() {
    let c = Contour::with_machine();
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("src");
    let target = dir.path().join("dst");
    make_tree(&source);
    let started = Instant::now();
    rsync(
        &c,
        &[
            "-a",
            &format!("{}/", source.display()),
            &format!("web-1:{}/", target.display()),
        ],
    );
    assert_eq!(snapshot(&target), snapshot(&source));
    // rsync waits for its remote side to exit: with cmdop hanging on its own stdin it never would.
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );

    // A change, an addition, a removal: the second run moves only those and mirrors the tree again.
    fs::write(source.join("small.txt"), b"changed\n").unwrap();
    fs::write(source.join("sub/new.txt"), b"new\n").unwrap();
    fs::remove_file(source.join("empty")).unwrap();
    let second = rsync(
        &c,
        &[
            "-a",
            "--delete",
            "--stats",
            &format!("{}/", source.display()),
            &format!("web-1:{}/", target.display()),
        ],
    );
    let stats = text(&second.stdout);
    assert!(
        stats.contains("Number of regular files transferred: 2"),
        "{stats}"
    );
    assert_eq!(snapshot(&target), snapshot(&source));
}

#[test]
fn git_clones_and_pushes_through_rsh() {
    let c = Contour::with_machine();
    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("repo.git");
    let git = |cwd: &Path, args: &[&str]| -> String {
        let output = Command::new("git")
            .args(args)
            .current_dir(cwd)
            .env("GIT_SSH_COMMAND", rsh_words(&c, "alice").join(" "))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", dir.path())
            .env("GIT_AUTHOR_NAME", "a")
            .env("GIT_AUTHOR_EMAIL", "a@example.com")
            .env("GIT_COMMITTER_NAME", "a")
            .env("GIT_COMMITTER_EMAIL", "a@example.com")
            .stdin(Stdio::null())
            .output()
            .expect("run git (`cargo xtask ci` installs it)");
        assert!(
            output.status.success(),
            "git {args:?}: {}",
            text(&output.stderr)
        );
        text(&output.stdout)
    };
    git(
        dir.path(),
        &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()],
    );
    let work = dir.path().join("work");
    fs::create_dir(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    fs::write(work.join("README"), "first\n").unwrap();
    git(&work, &["add", "README"]);
    git(&work, &["commit", "-q", "-m", "first"]);
    let remote = format!("web-1:{}", bare.display());
    git(&work, &["push", "-q", &remote, "main"]);

    let clone = dir.path().join("clone");
    git(
        dir.path(),
        &["clone", "-q", &remote, clone.to_str().unwrap()],
    );
    assert_eq!(fs::read_to_string(clone.join("README")).unwrap(), "first\n");
    fs::write(clone.join("README"), "second\n").unwrap();
    git(&clone, &["commit", "-q", "-am", "second"]);
    git(&clone, &["push", "-q", "origin", "main"]);
    assert_eq!(
        git(&bare, &["log", "--format=%s", "main"]),
        "second\nfirst\n"
    );
}

#[test]
fn a_tar_pipe_goes_both_ways() {
    let c = Contour::with_machine();
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("src");
    make_tree(&source);
    let there = dir.path().join("there");
    fs::create_dir(&there).unwrap();
    // `cmdop … connect exec web-1 -- sh -c SCRIPT`, quoted for sh.
    let sh = |script: &str| {
        let mut words = cmdop_words(&c, "alice");
        words.extend(["connect", "exec", "web-1", "--", "sh", "-c", script].map(str::to_owned));
        words
            .iter()
            .map(|w| format!("'{}'", w.replace('\'', r"'\''")))
            .collect::<Vec<_>>()
            .join(" ")
    };
    // Up: tar c here | exec tar x there; down: exec tar c there | tar x here.
    let up = format!(
        "tar c -C {} . | {}",
        source.display(),
        sh(&format!("tar x -C {}", there.display()))
    );
    let status = Command::new("sh").arg("-c").arg(&up).status().unwrap();
    assert!(status.success(), "{up}");
    assert_eq!(snapshot(&there), snapshot(&source));
    let back = dir.path().join("back");
    fs::create_dir(&back).unwrap();
    let down = format!(
        "{} | tar x -C {}",
        sh(&format!("tar c -C {} .", there.display())),
        back.display()
    );
    let status = Command::new("sh").arg("-c").arg(&down).status().unwrap();
    assert!(status.success(), "{down}");
    assert_eq!(snapshot(&back), snapshot(&source));
}

#[test]
fn exec_and_rsh_end_when_the_remote_command_ends_whatever_stdin_does() {
    let c = Contour::with_machine();
    let mut exec = c.cli_with_key("alice", &c.member_key("prod"));
    exec.args(["connect", "exec", "web-1", "--", "echo", "hi"]);
    let mut rsh = Command::new(&rsh_words(&c, "alice")[0]);
    rsh.args(&rsh_words(&c, "alice")[1..])
        .args(["web-1", "echo", "hi"]);
    for mut command in [exec, rsh] {
        // stdin is a pipe that stays open and silent, as `sleep 8 | cmdop …` gives it.
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let _held_open = child.stdin.take();
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{command:?} still runs although `echo hi` has ended"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let output = child.wait_with_output().unwrap();
        assert!(status.success(), "{}", text(&output.stderr));
        assert_eq!(text(&output.stdout), "hi\n");
    }
}

#[test]
fn rsh_runs_the_words_through_the_remote_shell_and_refuses_unknown_options() {
    let c = Contour::with_machine();
    let words = rsh_words(&c, "alice");
    let rsh = |args: &[&str]| {
        let mut command = Command::new(&words[0]);
        command.args(&words[1..]).args(args);
        command
    };
    // As ssh does: the words are joined and the remote shell expands them; the exit code comes through.
    let out = run(rsh(&[
        "-T",
        "-o",
        "BatchMode=yes",
        "-p",
        "22",
        "-l",
        "nobody",
        "-q",
        "web-1",
        "echo",
        "$((40+2))",
        ";",
        "exit",
        "3",
    ])
    .stdin(Stdio::null()));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "42\n");
    // stdin passes through.
    let mut child = rsh(&["user@web-1", "tr", "a-z", "A-Z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"loud\n").unwrap();
    assert_eq!(text(&child.wait_with_output().unwrap().stdout), "LOUD\n");
    // An option ssh users pass by mistake is a clear usage error.
    let out = run(rsh(&["-v", "web-1", "true"]).stdin(Stdio::null()));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("unknown option -v"),
        "{}",
        text(&out.stderr)
    );
    // Without a command and without a terminal: the login shell reads stdin, as with ssh.
    let mut child = rsh(&["web-1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"echo from-stdin\nexit 4\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(text(&out.stdout), "from-stdin\n");
}

#[test]
fn connect_without_a_terminal_runs_the_shell_without_a_pty() {
    let c = Contour::with_machine();
    let mut connect = c.cli_with_key("alice", &c.member_key("prod"));
    let mut child = connect
        .args(["connect", "web-1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"test -t 0 || echo no-tty\nexit 7\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    // Only the output: no prompt, no echo, no bracketed-paste escapes.
    assert_eq!(text(&out.stdout), "no-tty\n");
    // A named session needs a terminal.
    let out = run(c.cli_with_key("alice", &c.member_key("prod")).args([
        "connect",
        "web-1",
        "--session",
        "build",
    ]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("need a terminal"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn ssh_reaches_the_machine_s_sshd_through_proxy_and_ssh_config() {
    let c = Contour::with_machine();
    let dir = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(dir.path());
    let cmdop = cmdop_words(&c, "alice");
    // The flags that pick the relay and credential, then `connect proxy`: what a ProxyCommand runs.
    let proxy = format!(
        "{} connect proxy %h localhost:{}",
        cmdop.join(" "),
        sshd.port
    );
    let out = run(sshd.ssh().args([
        "-o",
        &format!("ProxyCommand={proxy}"),
        "root@web-1",
        "echo through-the-contour; hostname",
    ]));
    assert!(out.status.success(), "ssh: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("through-the-contour\n"),
        "{}",
        text(&out.stdout)
    );

    // `cmdop ssh-config` writes that block for every machine; ssh -F uses it as is.
    let mut config = c.cli_with_key("alice", &c.member_key("prod"));
    config.args(["ssh-config", "--port", &sshd.port.to_string()]);
    let block = run_ok(&mut config);
    assert!(block.contains("Host web-1\n"), "{block}");
    assert!(block.contains("ProxyCommand "), "{block}");
    let file = dir.path().join("ssh_config");
    fs::write(&file, &block).unwrap();
    let out = run(sshd
        .ssh()
        .arg("-F")
        .arg(&file)
        .args(["root@web-1", "echo via-ssh-config"]));
    assert!(
        out.status.success(),
        "ssh -F: {}\n{block}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "via-ssh-config\n");

    // A destination the machine's policy refuses is refused, as for a forward.
    let mut refused = c.cli_with_key("alice", &c.member_key("prod"));
    refused.args(["connect", "proxy", "web-1", "169.254.169.254:80"]);
    let out = run(&mut refused);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not an allowed destination"),
        "{}",
        text(&out.stderr)
    );
}

/// Twenty agents labelled role=web (the machine has 2 cores: each agent idles at a few MiB and no CPU), one
/// of them stopped and one whose commands fail, and one role=db machine that must not be picked.
#[test]
fn exec_by_label_runs_on_every_online_machine_and_lists_the_offline_one() {
    let mut builder =
        Contour::builder()
            .fleet("prod")
            .agent_with_args("db-1", "prod", &["--label", "role=db"]);
    let names: Vec<String> = (1..=20).map(|i| format!("web-{i:02}")).collect();
    // web-07's commands fail: its agent passes LANG on to them, and the command checks it.
    for name in names.iter().filter(|n| *n != "web-07") {
        builder = builder.agent_with_args(
            name,
            "prod",
            &["--label", "role=web", "--label", "env=prod"],
        );
    }
    let mut c = builder.start();
    let mut failing = c.agent_command(
        "web-07",
        "prod",
        &c.agent_key("prod"),
        &["--label", "role=web"],
    );
    failing.env("LANG", "C.fail");
    let mut failing = Daemon::spawn(failing);
    online_id(&mut failing);
    // web-13 goes offline: SIGTERM makes the agent say goodbye, and the relay marks it offline at once.
    let web13 = c.machine_mut("web-13");
    let status = Command::new("kill")
        .args(["-TERM", &web13.agent.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    web13.agent.child.wait().unwrap();
    cmdop_tests::eventually(Duration::from_secs(20), "web-13 offline", || {
        c.list("alice", &c.member_key("prod"), None)
            .iter()
            .any(|m| m["hostname"] == "web-13" && m["online"] == false)
            .then_some(())
    });

    let script = r#"test "$LANG" != C.fail && echo up"#;
    let started = Instant::now();
    let mut exec = c.cli_with_key("alice", &c.member_key("prod"));
    exec.args([
        "connect",
        "exec",
        "--label",
        "role=web",
        "--parallel",
        "8",
        "--json",
        "--",
        "sh",
        "-c",
        script,
    ]);
    let out = run(&mut exec);
    let elapsed = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let (summary, machines) = lines.split_last().unwrap();
    assert_eq!(
        summary["summary"],
        serde_json::json!({"machines": 20, "ok": 18, "failed": 1, "offline": 1, "timed_out": 0}),
        "{}",
        text(&out.stdout)
    );
    let by_name: BTreeMap<&str, &Value> = machines
        .iter()
        .map(|m| (m["hostname"].as_str().unwrap(), m))
        .collect();
    assert_eq!(by_name.len(), 20);
    assert!(!by_name.contains_key("db-1"));
    assert_eq!(by_name["web-07"]["status"], "failed");
    assert_eq!(by_name["web-07"]["exit_code"], 1);
    assert_eq!(by_name["web-13"]["status"], "offline");
    assert_eq!(by_name["web-13"]["exit_code"], Value::Null);
    assert_eq!(by_name["web-01"]["stdout"], "up\n");
    eprintln!("exec --label over 20 agents (19 online, 8 at a time): {elapsed:?}");

    // Without --json: lines prefixed with the hostname, the offline machine named, a summary on stderr.
    let mut exec = c.cli_with_key("alice", &c.member_key("prod"));
    exec.args([
        "connect", "exec", "--label", "role=web", "--label", "env=prod", "--", "sh", "-c", script,
    ]);
    let out = run(&mut exec);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 18, "{stdout}");
    assert!(stdout.contains("web-01: up\n"), "{stdout}");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("web-13: offline"), "{stderr}");
    assert!(
        stderr.contains("19 machines: 18 ok, 0 failed, 1 offline (web-13)"),
        "{stderr}"
    );
    // web-07 carries no env=prod label, so it was not picked.
    assert!(!stderr.contains("web-07"), "{stderr}");

    // --machines names machines; every machine returning 0 is exit 0.
    let mut exec = c.cli_with_key("alice", &c.member_key("prod"));
    exec.args(["connect", "exec", "--machines", "web-01,db-1", "--", "true"]);
    let out = run(&mut exec);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // The labels show in the listing.
    let listed = c.list("alice", &c.member_key("prod"), None);
    let db = listed.iter().find(|m| m["hostname"] == "db-1").unwrap();
    assert_eq!(db["labels"], serde_json::json!({"role": "db"}));
}
