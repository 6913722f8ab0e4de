//! `cmdop connect exec` from the real binaries: output, exit codes, signals, timeouts, stdin, large outputs,
//! concurrency, pinning, and cmdop's own failures.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cmdop_tests::{Contour, Daemon, OneMachine};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A contour with one fleet, one agent (`web-1`) and a member key.
struct Fixture {
    contour: Contour,
    member_key: PathBuf,
    _agent: Daemon,
    machine_id: String,
}

impl Fixture {
    fn new() -> Self {
        let contour = Contour::start();
        let OneMachine {
            agent,
            machine_id,
            member_key,
        } = contour.one_machine();
        Self {
            contour,
            member_key,
            _agent: agent,
            machine_id,
        }
    }

    fn exec(&self, extra: &[&str], command: &[&str]) -> Command {
        let mut cmd = self.contour.cli("alice");
        cmd.arg("--api-key-file")
            .arg(&self.member_key)
            .args(["connect", "exec", "web-1"])
            .args(extra)
            .arg("--")
            .args(command);
        cmd
    }

    fn run(&self, command: &[&str]) -> Output {
        self.exec(&[], command).output().unwrap()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn output_streams_stay_separate_and_the_exit_code_comes_through() {
    let f = Fixture::new();
    let out = f.run(&["sh", "-c", "echo to-out; echo to-err >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "to-out\n");
    assert!(
        text(&out.stderr).ends_with("to-err\n"),
        "{}",
        text(&out.stderr)
    );

    let out = f.run(&["true"]);
    assert_eq!(out.status.code(), Some(0));
    // The command runs in the agent user's home directory.
    let out = f.run(&["pwd"]);
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    assert_eq!(
        text(&out.stdout).trim(),
        std::fs::canonicalize(home).unwrap().to_str().unwrap()
    );
}

#[test]
fn a_signal_exits_128_plus_n_and_a_missing_program_127() {
    let f = Fixture::new();
    let out = f.run(&["sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(128 + 15));
    let out = f.run(&["no-such-program-cmdop-test"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(
        text(&out.stderr).contains("no-such-program-cmdop-test"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn timeout_kills_the_remote_group_and_exits_124() {
    let f = Fixture::new();
    let started = Instant::now();
    let out = f
        .exec(&["--timeout", "1s"], &["sh", "-c", "sleep 100 & sleep 100"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(124), "{}", text(&out.stderr));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    // Nothing of the group survives on the machine.
    let survivors = Command::new("pgrep")
        .args(["-f", "sleep 100"])
        .output()
        .unwrap();
    assert!(
        survivors.stdout.is_empty(),
        "left running: {}",
        text(&survivors.stdout)
    );
}

#[test]
fn stdin_is_forwarded_and_eof_reaches_the_remote_process() {
    let f = Fixture::new();
    let mut child = f
        .exec(&[], &["cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hi\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "hi\n");
}

#[test]
fn a_100_mib_output_arrives_complete() {
    let f = Fixture::new();
    let size = 100 * 1024 * 1024;
    let script = format!("yes 0123456789abcdef0123456789abcdef | head -c {size}");
    let out = f
        .exec(&["--timeout", "0"], &["sh", "-c", &script])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(out.stdout.len(), size);
    let expected: Vec<u8> = b"0123456789abcdef0123456789abcdef\n"
        .iter()
        .copied()
        .cycle()
        .take(size)
        .collect();
    assert_eq!(Sha256::digest(&out.stdout), Sha256::digest(&expected));
}

#[test]
fn fifty_concurrent_execs_on_one_agent() {
    let f = Fixture::new();
    let children: Vec<_> = (0..50)
        .map(|i| {
            f.exec(&[], &["sh", "-c", &format!("echo run-{i}")])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "run {i}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("run-{i}\n"));
    }
}

#[test]
fn json_prints_one_object() {
    let f = Fixture::new();
    let out = f
        .exec(&["--json"], &["sh", "-c", "echo a; echo b >&2; exit 5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    let value: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["machine_id"], f.machine_id.as_str());
    assert_eq!(value["hostname"], "web-1");
    assert_eq!(
        value["command"],
        serde_json::json!(["sh", "-c", "echo a; echo b >&2; exit 5"])
    );
    assert_eq!(value["exit_code"], 5);
    assert_eq!(value["stdout"], "a\n");
    assert_eq!(value["stderr"], "b\n");
    assert!(value["duration_ms"].is_u64());
}

#[test]
fn own_failures_exit_255_with_one_line() {
    let f = Fixture::new();
    let mut cmd = f.contour.cli("alice");
    cmd.arg("--api-key-file")
        .arg(&f.member_key)
        .args(["connect", "exec", "nowhere", "--", "true"]);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("nowhere"),
        "{}",
        text(&out.stderr)
    );
    // Without `--` clap refuses the command line.
    let mut cmd = f.contour.cli("alice");
    cmd.arg("--api-key-file")
        .arg(&f.member_key)
        .args(["connect", "exec", "web-1", "true"]);
    assert!(!cmd.output().unwrap().status.success());
}

#[test]
fn the_machine_key_is_pinned_on_first_contact_and_a_changed_key_is_refused() {
    let f = Fixture::new();
    assert_eq!(f.run(&["true"]).status.code(), Some(0));
    let known = f
        .contour
        .root
        .path()
        .join("clients/alice/client/known_machines");
    let pinned = std::fs::read_to_string(&known).unwrap();
    assert!(pinned.starts_with(&f.machine_id), "{pinned}");
    // Replace the pinned key with another one: the next exec must refuse before running anything.
    let other = cmdop_tests::run_ok(
        cmdop_tests::command("cmdop-agent")
            .arg("--config-dir")
            .arg(f.contour.root.path().join("impostor"))
            .args(["--kek-backend", "file", "identity", "init", "--json"]),
    );
    let other: Value = serde_json::from_str(&other).unwrap();
    let mut fields: Vec<&str> = pinned.split_whitespace().collect();
    fields[1] = other["public_key"].as_str().unwrap();
    std::fs::write(&known, format!("{}\n", fields.join(" "))).unwrap();
    let out = f.run(&["touch", "/tmp/cmdop-must-not-exist"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("has changed"),
        "{}",
        text(&out.stderr)
    );
    assert!(!std::path::Path::new("/tmp/cmdop-must-not-exist").exists());
}

#[test]
fn an_ambiguous_name_lists_the_candidates() {
    let f = Fixture::new();
    let (_, agent_key) = f.contour.api_key("prod", "agent");
    let mut second = f.contour.agent("web-2", "prod", &agent_key, &[]);
    cmdop_tests::online_id(&mut second);
    let mut cmd = f.contour.cli("alice");
    cmd.arg("--api-key-file")
        .arg(&f.member_key)
        .args(["connect", "exec", "web", "--", "true"]);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(255));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("web-1") && stderr.contains("web-2"),
        "{stderr}"
    );
    // An exact hostname still wins over the shared prefix.
    assert_eq!(f.run(&["true"]).status.code(), Some(0));
}
