//! `cmdop-agent identity init|show` through the real binary: what a user sees, the exit codes, and that
//! broken identity files are reported and left alone.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// The binary with a hermetic environment: no inherited cmdop settings, home or XDG dirs, log filter, and a
/// D-Bus address that leads nowhere, so a desktop keyring never gets test entries.
fn agent(config_dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cmdop-agent"));
    for var in [
        "CMDOP_CONFIG_DIR",
        "CMDOP_KEK_BACKEND",
        "HOME",
        "XDG_CONFIG_HOME",
        "RUST_LOG",
        "NO_COLOR",
    ] {
        command.env_remove(var);
    }
    command.env(
        "DBUS_SESSION_BUS_ADDRESS",
        "unix:path=/nonexistent/cmdop-test-bus",
    );
    command.arg("--config-dir").arg(config_dir);
    command
}

fn run(command: &mut Command) -> Output {
    command.output().expect("the cmdop-agent binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(output: &Output) -> Value {
    assert!(output.status.success(), "{}", stderr(output));
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(output)))
}

/// The single `cmdop-agent: …` error line, checked to be the only one.
fn error_line(output: &Output) -> String {
    assert_eq!(
        output.status.code(),
        Some(1),
        "stdout: {}\nstderr: {}",
        stdout(output),
        stderr(output)
    );
    let err = stderr(output);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("cmdop-agent: "))
        .collect();
    assert_eq!(lines.len(), 1, "the error is printed exactly once: {err}");
    lines[0].to_owned()
}

#[test]
fn init_twice_keeps_one_identity_and_show_agrees() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cmdop");

    let first = run(agent(&dir).args(["identity", "init"]));
    assert!(first.status.success(), "{}", stderr(&first));
    let text = stdout(&first);
    assert!(text.starts_with("created a new identity\n"), "{text}");
    assert!(text.contains("kek kept in:  key file "), "{text}");
    // The fallback is also in the log, with the reason.
    assert!(
        stderr(&first).contains("keeping the key-encryption key in a key file"),
        "{}",
        stderr(&first)
    );

    let second = run(agent(&dir).args(["identity", "init"]));
    assert!(second.status.success());
    assert!(
        stdout(&second).starts_with("found an existing identity\n"),
        "{}",
        stdout(&second)
    );
    assert_eq!(
        stdout(&first).lines().skip(1).collect::<Vec<_>>(),
        stdout(&second).lines().skip(1).collect::<Vec<_>>()
    );

    let shown = json(&run(agent(&dir).args(["identity", "show", "--json"])));
    let key = shown["public_key"].as_str().unwrap();
    let fingerprint = shown["fingerprint"].as_str().unwrap();
    assert!(text.contains(&format!("public key:   {key}\n")), "{text}");
    assert!(
        text.contains(&format!("fingerprint:  {fingerprint}\n")),
        "{text}"
    );
    assert!(
        key.starts_with("ed25519:") && fingerprint.starts_with("SHA256:"),
        "{shown}"
    );
    assert_eq!(shown["fingerprint_short"].as_str().unwrap().len(), 11);
    assert_eq!(
        shown["seed_path"],
        dir.join("agent_keypair.bin").to_str().unwrap()
    );
    assert_eq!(shown["kek_location"]["kind"], "key_file");
    assert_eq!(
        shown["kek_location"]["path"],
        dir.join("agent_keypair.key").to_str().unwrap()
    );

    let mode = |name: &str| fs::metadata(dir.join(name)).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        (mode("agent_keypair.bin"), mode("agent_keypair.key")),
        (0o600, 0o600)
    );

    let plain = stdout(&run(agent(&dir).args(["identity", "show"])));
    assert_eq!(
        plain,
        text.lines()
            .skip(1)
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    );
}

#[test]
fn config_dir_comes_from_the_environment_too() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("from-env");
    let mut init = Command::new(env!("CARGO_BIN_EXE_cmdop-agent"));
    init.env_remove("XDG_CONFIG_HOME")
        .env("HOME", tmp.path())
        .env("CMDOP_CONFIG_DIR", &dir);
    init.env(
        "DBUS_SESSION_BUS_ADDRESS",
        "unix:path=/nonexistent/cmdop-test-bus",
    );
    let created = json(&run(init.args(["identity", "init", "--json"])));
    assert_eq!(created["created"], true);
    assert_eq!(
        created["seed_path"],
        dir.join("agent_keypair.bin").to_str().unwrap()
    );
    let shown = json(&run(agent(&dir).args(["identity", "show", "--json"])));
    assert_eq!(shown["public_key"], created["public_key"]);
}

#[test]
fn default_config_dir_is_under_xdg_config_home() {
    let tmp = tempfile::tempdir().unwrap();
    let mut init = Command::new(env!("CARGO_BIN_EXE_cmdop-agent"));
    init.env_remove("CMDOP_CONFIG_DIR")
        .env("XDG_CONFIG_HOME", tmp.path())
        .env("HOME", "/nonexistent");
    init.env(
        "DBUS_SESSION_BUS_ADDRESS",
        "unix:path=/nonexistent/cmdop-test-bus",
    );
    let created = json(&run(init.args([
        "identity",
        "init",
        "--json",
        "--kek-backend",
        "file",
    ])));
    assert_eq!(
        created["seed_path"],
        tmp.path().join("cmdop/agent_keypair.bin").to_str().unwrap()
    );
}

#[test]
fn show_without_an_identity_says_to_run_init_and_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cmdop");
    let output = run(agent(&dir).args(["identity", "show"]));
    let line = error_line(&output);
    assert!(
        line.contains("no identity in") && line.contains("run `cmdop-agent identity init`"),
        "{line}"
    );
    assert!(stdout(&output).is_empty());
    assert!(!dir.exists(), "show must not create the config directory");
}

#[test]
fn loose_permissions_are_refused_with_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cmdop");
    assert!(run(agent(&dir).args(["identity", "init"])).status.success());
    let seed = dir.join("agent_keypair.bin");
    fs::set_permissions(&seed, fs::Permissions::from_mode(0o644)).unwrap();
    for args in [["identity", "show"], ["identity", "init"]] {
        let line = error_line(&run(agent(&dir).args(args)));
        assert!(
            line.contains(&format!("run `chmod 600 {}`", seed.display())),
            "{line}"
        );
    }
}

#[test]
fn corrupt_seed_file_is_reported_and_left_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cmdop");
    assert!(run(agent(&dir).args(["identity", "init"])).status.success());
    let seed = dir.join("agent_keypair.bin");
    let mut bytes = fs::read(&seed).unwrap();
    bytes[60] ^= 0x01;
    fs::write(&seed, &bytes).unwrap();
    for args in [["identity", "show"], ["identity", "init"]] {
        let line = error_line(&run(agent(&dir).args(args)));
        assert!(
            line.contains("cannot decrypt") && line.contains("left untouched"),
            "{line}"
        );
    }
    assert_eq!(
        fs::read(&seed).unwrap(),
        bytes,
        "the file is byte-identical after both commands"
    );
}

/// Issue 13, hole 10: on the agent, deleting `agent_keypair.bin` while its `.key` remains created a new
/// identity, and so a new machine to the relay. It is an error for `identity init` and for `run`, which write
/// nothing.
#[test]
fn a_deleted_seed_file_with_its_key_file_left_is_an_error_not_a_new_machine() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cmdop");
    let init = ["--kek-backend", "file", "identity", "init"];
    assert!(run(agent(&dir).args(init)).status.success());
    fs::remove_file(dir.join("agent_keypair.bin")).unwrap();
    let key = fs::read(dir.join("agent_keypair.key")).unwrap();
    let api_key = tmp.path().join("api-key");
    fs::write(&api_key, "cmdop_ak_unused_unused\n").unwrap();
    fs::set_permissions(&api_key, fs::Permissions::from_mode(0o600)).unwrap();
    let run_args = [
        "--kek-backend",
        "file",
        "run",
        "--relay",
        "127.0.0.1:9",
        "--relay-fingerprint",
        "sha256:0000000000000000000000000000000000000000000000000000000000000000",
        "--workspace",
        "prod",
        "--api-key-file",
        api_key.to_str().unwrap(),
    ];
    for args in [&init[..], &run_args[..]] {
        let output = run(agent(&dir).args(args));
        let err = stderr(&output);
        assert!(!output.status.success(), "{args:?}: {err}");
        assert!(
            err.contains("agent_keypair.bin") && err.contains("agent_keypair.key"),
            "{args:?}: {err}"
        );
        assert!(
            !dir.join("agent_keypair.bin").exists(),
            "{args:?}: a new identity"
        );
        assert_eq!(fs::read(dir.join("agent_keypair.key")).unwrap(), key);
    }
}

#[test]
fn umask_000_still_gives_owner_only_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cmdop");
    let mut sh = Command::new("/bin/sh");
    sh.arg("-c")
        .arg("umask 000 && exec \"$0\" --config-dir \"$1\" identity init")
        .arg(env!("CARGO_BIN_EXE_cmdop-agent"))
        .arg(&dir)
        .env(
            "DBUS_SESSION_BUS_ADDRESS",
            "unix:path=/nonexistent/cmdop-test-bus",
        );
    let output = run(&mut sh);
    assert!(output.status.success(), "{}", stderr(&output));
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("agent_keypair.bin")), 0o600);
    assert_eq!(mode(&dir.join("agent_keypair.key")), 0o600);
}

#[test]
fn agents_starting_together_end_with_one_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cmdop");
    let children: Vec<_> = (0..6)
        .map(|_| {
            agent(&dir)
                .args(["identity", "init", "--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let results: Vec<Value> = children
        .into_iter()
        .map(|c| json(&c.wait_with_output().unwrap()))
        .collect();
    assert!(
        results
            .iter()
            .all(|r| r["public_key"] == results[0]["public_key"]),
        "{results:#?}"
    );
    assert_eq!(
        results.iter().filter(|r| r["created"] == true).count(),
        1,
        "{results:#?}"
    );
}

#[test]
fn keyring_only_without_a_keyring_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cmdop");
    let line = error_line(&run(agent(&dir).args([
        "--kek-backend",
        "keyring",
        "identity",
        "init",
    ])));
    assert!(line.contains("the os keyring is not reachable"), "{line}");
    assert!(!dir.join("agent_keypair.bin").exists());
}

#[test]
fn help_and_version() {
    let tmp = tempfile::tempdir().unwrap();
    let help = run(agent(tmp.path()).args(["identity", "--help"]));
    assert!(help.status.success());
    assert!(
        stdout(&help).contains("init") && stdout(&help).contains("show"),
        "{}",
        stdout(&help)
    );
    let version = run(Command::new(env!("CARGO_BIN_EXE_cmdop-agent")).arg("--version"));
    assert_eq!(
        stdout(&version).trim(),
        format!("cmdop-agent {}", env!("CARGO_PKG_VERSION"))
    );
}
