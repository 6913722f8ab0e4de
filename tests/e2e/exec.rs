//! `cmdop connect exec` from the real binaries: output, exit codes, signals, timeouts, stdin, large outputs,
//! concurrency, pinning, and cmdop's own failures.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cmdop_tests::{Contour, run};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// `cmdop connect exec web-1 EXTRA… -- COMMAND…` as client `alice` with the member key.
fn exec(c: &Contour, extra: &[&str], command: &[&str]) -> Command {
    let mut cmd = c.cli_with_key("alice", &c.member_key("prod"));
    cmd.args(["connect", "exec", "web-1"])
        .args(extra)
        .arg("--")
        .args(command);
    cmd
}

/// Runs `command` on web-1 to completion.
fn run_there(c: &Contour, command: &[&str]) -> Output {
    run(&mut exec(c, &[], command))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn output_streams_stay_separate_and_the_exit_code_comes_through() {
    let c = Contour::with_machine();
    let out = run_there(&c, &["sh", "-c", "echo to-out; echo to-err >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "to-out\n");
    assert!(
        text(&out.stderr).ends_with("to-err\n"),
        "{}",
        text(&out.stderr)
    );

    let out = run_there(&c, &["true"]);
    assert_eq!(out.status.code(), Some(0));
    // The command runs in the agent user's home directory.
    let out = run_there(&c, &["pwd"]);
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    assert_eq!(
        text(&out.stdout).trim(),
        std::fs::canonicalize(home).unwrap().to_str().unwrap()
    );
}

#[test]
fn a_signal_exits_128_plus_n_and_a_missing_program_127() {
    let c = Contour::with_machine();
    let out = run_there(&c, &["sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(128 + 15));
    let out = run_there(&c, &["no-such-program-cmdop-test"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(
        text(&out.stderr).contains("no-such-program-cmdop-test"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn timeout_kills_the_remote_group_and_exits_124() {
    let c = Contour::with_machine();
    let started = Instant::now();
    let out = exec(
        &c,
        &["--timeout", "1s"],
        // A duration no other test uses: the check below looks at every process on this machine, and other
        // tests running at the same time sleep 100 s too.
        &["sh", "-c", "sleep 1017 & sleep 1017"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(124), "{}", text(&out.stderr));
    // The timeout the user asked for says so when it fires.
    assert!(
        text(&out.stderr).contains("killed after 1s (--timeout)"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    // Nothing of the group survives on the machine.
    let survivors = Command::new("pgrep")
        .args(["-f", "sleep 1017"])
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
    let c = Contour::with_machine();
    let mut child = exec(&c, &[], &["cat"])
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
    let c = Contour::with_machine();
    let size = 100 * 1024 * 1024;
    let script = format!("yes 0123456789abcdef0123456789abcdef | head -c {size}");
    let out = exec(&c, &["--timeout", "0"], &["sh", "-c", &script])
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
    let c = Contour::with_machine();
    let children: Vec<_> = (0..50)
        .map(|i| {
            exec(&c, &[], &["sh", "-c", &format!("echo run-{i}")])
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
    let c = Contour::with_machine();
    let out = exec(&c, &["--json"], &["sh", "-c", "echo a; echo b >&2; exit 5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    let value: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["machine_id"], c.machine("web-1").id.as_str());
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
    let c = Contour::with_machine();
    let mut cmd = c.cli_with_key("alice", &c.member_key("prod"));
    cmd.args(["connect", "exec", "nowhere", "--", "true"]);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("nowhere"),
        "{}",
        text(&out.stderr)
    );
    // Without `--` clap refuses the command line.
    let mut cmd = c.cli_with_key("alice", &c.member_key("prod"));
    cmd.args(["connect", "exec", "web-1", "true"]);
    assert!(!cmd.output().unwrap().status.success());
}

#[test]
fn the_machine_key_is_pinned_on_first_contact_and_a_changed_key_is_refused() {
    let c = Contour::with_machine();
    assert_eq!(run_there(&c, &["true"]).status.code(), Some(0));
    let known = c.root.path().join("clients/alice/client/known_machines");
    let pinned = std::fs::read_to_string(&known).unwrap();
    // `<relay fingerprint> <fleet id> <hostname> <machine id> <public key>`
    assert!(
        pinned.starts_with(&c.fingerprint)
            && pinned.contains(&format!(" web-1 {} ", c.machine("web-1").id)),
        "{pinned}"
    );
    // Replace the pinned key with another one: the next exec must refuse before running anything.
    let other = cmdop_tests::run_ok(
        cmdop_tests::command("cmdop-agent")
            .arg("--config-dir")
            .arg(c.root.path().join("impostor"))
            .args(["--kek-backend", "file", "identity", "init", "--json"]),
    );
    let other: Value = serde_json::from_str(&other).unwrap();
    let mut fields: Vec<&str> = pinned.split_whitespace().collect();
    fields[4] = other["public_key"].as_str().unwrap();
    std::fs::write(&known, format!("{}\n", fields.join(" "))).unwrap();
    let out = run_there(&c, &["touch", "/tmp/cmdop-must-not-exist"]);
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
    let mut c = Contour::with_machine();
    c.add_machine("web-2", "prod", &[]);
    let mut cmd = c.cli_with_key("alice", &c.member_key("prod"));
    cmd.args(["connect", "exec", "web", "--", "true"]);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(255));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("web-1") && stderr.contains("web-2"),
        "{stderr}"
    );
    // An exact hostname still wins over the shared prefix.
    assert_eq!(run_there(&c, &["true"]).status.code(), Some(0));
}

#[test]
fn a_first_contact_is_confirmed_on_a_terminal_refused_without_one_and_accepted_by_flag() {
    use cmdop_tests::terminal::Terminal;
    let c = Contour::with_machine();
    let key = c.member_key("prod");
    let marker = c.root.path().join("first-contact");
    let strict = |client: &str| {
        let mut command = c.cli_strict(client);
        command
            .arg("--api-key-file")
            .arg(&key)
            .args(["connect", "exec", "web-1", "--", "touch"])
            .arg(&marker);
        command
    };
    // No terminal, no --accept-new: refused, saying how to accept it, before anything ran.
    let out = strict("script").output().unwrap();
    assert_eq!(out.status.code(), Some(255));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("can't be established") && stderr.contains("--accept-new"),
        "{stderr}"
    );
    assert!(stderr.contains(&c.agent_fingerprint("web-1")), "{stderr}");
    assert!(!marker.exists());
    // On a terminal the person is asked, as ssh does; "no" refuses.
    let mut terminal = Terminal::spawn(&strict("person"), 100, 30);
    terminal.expect("(yes/no)?", Duration::from_secs(30));
    terminal.send(b"no\r");
    assert_eq!(terminal.wait(Duration::from_secs(30)), 255);
    assert!(!marker.exists());
    // "yes" pins it and runs the command; the next run asks nothing.
    let mut terminal = Terminal::spawn(&strict("person"), 100, 30);
    terminal.expect("(yes/no)?", Duration::from_secs(30));
    terminal.send(b"yes\r");
    assert_eq!(terminal.wait(Duration::from_secs(30)), 0);
    assert!(marker.exists());
    std::fs::remove_file(&marker).unwrap();
    let out = strict("person").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(marker.exists());
    // A script with --accept-new pins without asking.
    let out = c
        .cli_with_key("script", &key)
        .args(["connect", "exec", "web-1", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("first contact with web-1"));
}

#[test]
fn usage_errors_exit_2_and_say_what_to_type() {
    let c = Contour::with_machine();
    // The missing `--` is put back in the tip.
    let mut cmd = c.cli_with_key("alice", &c.member_key("prod"));
    cmd.args(["connect", "exec", "web-1", "uname", "-a"]);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("connect exec web-1 -- uname -a"),
        "{}",
        text(&out.stderr)
    );
    // A value that does not parse is a usage error, like an unknown flag.
    for args in [
        &[
            "connect",
            "exec",
            "web-1",
            "--timeout",
            "soon",
            "--",
            "true",
        ][..],
        &["connect", "forward", "web-1", "8080"][..],
        &["connect", "cp", "--limit-rate", "fast", "a", "web-1:b"][..],
        &["connect", "web-1", "--session=a/b"][..],
        &["connect", "exec", "--label", "role", "--", "true"][..],
    ] {
        let mut cmd = c.cli_with_key("alice", &c.member_key("prod"));
        let out = cmd.args(args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    // A relay address without a port says so, rather than "cannot resolve".
    let mut cmd = cmdop_tests::command("cmdop");
    cmd.arg("--config-dir")
        .arg(c.root.path().join("clients/alice"))
        .args([
            "--relay",
            "127.0.0.1",
            "--relay-fingerprint",
            &c.fingerprint,
            "--api-key-file",
        ])
        .arg(c.member_key("prod"))
        .args(["connect", "--list"]);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("the port is missing"),
        "{}",
        text(&out.stderr)
    );
}
