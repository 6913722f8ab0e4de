//! Running cmdop as an operator does: config files, JSON logs without secrets, Prometheus metrics, `status`,
//! draining on SIGTERM, systemd units, and the CLI's conventions (completions, man pages, a closed pipe).

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use cmdop_tests::{Contour, Daemon, command, eventually, online_id, run, run_ok};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// One relay started from a config file alone, one agent from its config file, a few clients: then every
/// operator-facing surface is checked against that one setup, ending with a draining SIGTERM.
#[test]
fn an_operator_runs_the_contour_from_config_files_and_sees_how_it_runs() {
    // The relay from its config file alone: no --data-dir, no --listen. RUST_LOG=debug so that the grep for
    // secrets below covers the chattiest logs the relay writes.
    let mut contour = Contour::builder()
        .relay_from_config_file()
        .relay_metrics()
        .relay_json_logs()
        .relay_env("RUST_LOG", "debug")
        .fleet("prod")
        .user("alice", &["prod"])
        .start();
    let relay_toml = contour.relay_config_file();
    let metrics_addr = contour.metrics_address().to_owned();

    // `config check` accepts the file and shows what it yields.
    let checked = run_ok(
        command("cmdop-relay")
            .arg("--config")
            .arg(&relay_toml)
            .args(["config", "check"]),
    );
    assert!(
        checked.contains("is valid") && checked.contains("127.0.0.1:0"),
        "{checked}"
    );

    let agent_key = contour.agent_key("prod");
    let member_key = contour.member_key("prod");
    let (revoked_id, revoked_key) = contour.api_key("prod", "member");
    contour.admin(&["key", "revoke", &revoked_id]);
    let token_file = contour.token_file("alice").to_owned();
    let token = read_secret(&token_file);

    // The agent from its config file (agent.toml in its config dir), logging JSON at debug level.
    let agent_dir = contour.agent_dir("web-1");
    std::fs::create_dir_all(&agent_dir).unwrap();
    std::fs::write(
        agent_dir.join("agent.toml"),
        format!(
            "relay = {:?}\nrelay_fingerprint = {:?}\nworkspace = \"prod\"\napi_key_file = {:?}\nhostname = \"web-1\"\nkek_backend = \"file\"\nlog_format = \"json\"\n",
            contour.address,
            contour.fingerprint,
            agent_key.display().to_string()
        ),
    )
    .unwrap();
    let checked = run_ok(
        command("cmdop-agent")
            .arg("--config-dir")
            .arg(&agent_dir)
            .args(["config", "check"]),
    );
    assert!(checked.contains("workspace         = prod"), "{checked}");
    let mut agent_run = command("cmdop-agent");
    agent_run
        .arg("--config-dir")
        .arg(&agent_dir)
        .arg("run")
        .env("RUST_LOG", "debug");
    let mut agent = Daemon::spawn(agent_run);
    let machine_id = online_id(&mut agent);

    // People: a user token through `cmdop login`, an API key, and a revoked key that must be refused.
    let mut client_logs = String::new();
    let cli = |name: &str| {
        let mut cli = contour.cli(name);
        cli.env("RUST_LOG", "debug");
        cli
    };
    let login = run(cli("alice")
        .args(["login", "--token-file"])
        .arg(&token_file));
    assert!(
        login.status.success(),
        "{}",
        String::from_utf8_lossy(&login.stderr)
    );
    client_logs.push_str(&String::from_utf8_lossy(&login.stderr));
    let status = run(cli("alice").args(["status", "--json"]));
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    client_logs.push_str(&String::from_utf8_lossy(&status.stderr));
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["fleets"], serde_json::json!(["prod"]));
    assert_eq!(status["relay"], contour.address.as_str());
    let exec = run(cli("bob").arg("--api-key-file").arg(&member_key).args([
        "connect",
        "exec",
        "web-1",
        "--",
        "echo",
        "through the relay",
    ]));
    assert_eq!(String::from_utf8_lossy(&exec.stdout), "through the relay\n");
    client_logs.push_str(&String::from_utf8_lossy(&exec.stderr));
    let refused = run(cli("mallory")
        .arg("--api-key-file")
        .arg(&revoked_key)
        .args(["connect", "--list"]));
    assert!(!refused.status.success());
    client_logs.push_str(&String::from_utf8_lossy(&refused.stderr));
    assert!(
        !client_logs.contains('\u{1b}'),
        "colour codes written to a pipe:\n{client_logs}"
    );

    // Every client above has gone: the gauge comes back to zero (a client that exits abruptly, as the closed-pipe one below does, stays counted until QUIC's idle timeout).
    eventually(WAIT, "no client left connected", || {
        let text = scrape(&metrics_addr, "/metrics");
        (metric(&text, "cmdop_relay_clients_connected{fleet=\"prod\"}") == 0).then_some(())
    });
    // A reader that goes away (`cmdop connect --list | head -0`) ends cmdop quietly.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let piped = contour
        .cli_with_key("bob", &member_key)
        .args(["connect", "--list"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        piped.status.success(),
        "exit {} on a closed pipe",
        piped.status
    );
    assert_eq!(
        String::from_utf8_lossy(&piped.stderr),
        "",
        "noise on a closed pipe"
    );

    // Metrics, scraped as Prometheus would.
    let text = scrape(&metrics_addr, "/metrics");
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("application/openmetrics-text"), "{text}");
    for line in [
        "cmdop_relay_agents_connected{fleet=\"prod\"} 1",
        "cmdop_relay_streams_total{kind=\"exec\"} 1",
        "cmdop_relay_streams_active{kind=\"exec\"} 0",
        "cmdop_relay_auth_failures_total{reason=\"revoked\"} 1",
        "cmdop_relay_sessions_total{role=\"agent\"} 1",
        "# EOF",
    ] {
        assert!(text.contains(line), "{line} not in\n{text}");
    }
    assert!(
        metric(&text, "cmdop_relay_relayed_bytes_total{direction=\"down\"}") > 0,
        "{text}"
    );
    assert!(
        metric(&text, "cmdop_relay_resident_memory_bytes") > 1_000_000,
        "{text}"
    );
    assert!(scrape(&metrics_addr, "/").starts_with("HTTP/1.1 404"));

    // `cmdop-relay status` finds the running relay through its data dir (from the config file).
    let status: Value = serde_json::from_str(&run_ok(
        command("cmdop-relay")
            .arg("--config")
            .arg(&relay_toml)
            .args(["status", "--json"]),
    ))
    .unwrap();
    assert_eq!(status["running"], true, "{status:#}");
    assert_eq!(status["listen"], contour.address.as_str());
    assert_eq!(status["fleets"], serde_json::json!(["prod"]));
    assert_eq!(status["machines_online"], 1);
    assert_eq!(status["agents_connected"], 1);
    assert_eq!(status["fingerprint"], contour.fingerprint.as_str());
    let human = run_ok(
        command("cmdop-relay")
            .arg("--config")
            .arg(&relay_toml)
            .arg("status"),
    );
    assert!(
        human.contains("running (pid") && human.contains("1 online"),
        "{human}"
    );

    // SIGTERM drains: a command already running finishes and its output arrives; then the relay exits 0.
    let mut slow = cli("bob");
    slow.arg("--api-key-file")
        .arg(&member_key)
        .args([
            "connect",
            "exec",
            "web-1",
            "--",
            "sh",
            "-c",
            "sleep 1; echo finished",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let slow = slow.spawn().unwrap();
    eventually(WAIT, "the slow exec to be routed", || {
        (metric(
            &scrape(&metrics_addr, "/metrics"),
            "cmdop_relay_streams_active{kind=\"exec\"}",
        ) == 1)
            .then_some(())
    });
    terminate(&contour.relay_mut().child);
    let slow = slow.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&slow.stdout),
        "finished\n",
        "{}",
        String::from_utf8_lossy(&slow.stderr)
    );
    assert!(slow.status.success());
    let relay_exit = contour.relay_mut().child.wait().unwrap();
    assert!(relay_exit.success(), "relay exit {relay_exit}");
    let status: Value = serde_json::from_str(&run_ok(
        command("cmdop-relay")
            .arg("--config")
            .arg(&relay_toml)
            .args(["status", "--json"]),
    ))
    .unwrap();
    assert_eq!(status["running"], false, "{status:#}");
    terminate(&agent.child);
    assert!(agent.child.wait().unwrap().success());

    // JSON logs are JSON, carry the events an operator looks for, and never a secret.
    let relay_log = contour.relay_mut().output();
    let agent_log = agent.output();
    let stdout_lines = [
        "relay fingerprint: ",
        "listening on ",
        "metrics on ",
        "online: machine ",
    ];
    for (who, log) in [("relay", &relay_log), ("agent", &agent_log)] {
        for line in log
            .lines()
            .filter(|l| !stdout_lines.iter().any(|p| l.starts_with(p)))
        {
            let parsed: Result<Value, _> = serde_json::from_str(line);
            assert!(parsed.is_ok(), "{who} log line is not JSON: {line}");
        }
    }
    assert!(
        relay_log.contains("\"message\":\"agent online\""),
        "{relay_log}"
    );
    assert!(relay_log.contains("draining"), "{relay_log}");
    assert!(relay_log.contains(&machine_id), "{relay_log}");
    let mut secrets = vec![
        ("agent API key", read_secret(&agent_key)),
        ("member API key", read_secret(&member_key)),
        ("revoked API key", read_secret(&revoked_key)),
        ("user token", token),
    ];
    // The key-encryption keys that unlock the agent's and the clients' seeds (the seeds themselves are
    // only ever held encrypted on disk, so the harness checks the keys that open them).
    // The agent's is always a file (kek_backend = "file"); a client's is one unless an OS keyring answered.
    let agent_kek = agent_dir.join("agent_keypair.key");
    assert!(agent_kek.is_file());
    let client_kek = contour
        .root
        .path()
        .join("clients/alice/client/agent_keypair.key");
    for path in [agent_kek, client_kek].into_iter().filter(|p| p.is_file()) {
        let kek = std::fs::read(&path).unwrap();
        let kek = kek.get(kek.len() - 32..).unwrap().to_vec();
        // And the seed itself, decrypted the way docs/identity.md specifies the file.
        let seed = open_seed(&path.with_extension("bin"), &kek);
        secrets.push(("key-encryption key (hex)", hex::encode(&kek)));
        secrets.push(("key-encryption key (base64)", base64(&kek)));
        secrets.push(("identity seed (hex)", hex::encode(&seed)));
        secrets.push(("identity seed (base64)", base64(&seed)));
        secrets.push((
            "identity seed (base64url)",
            data_encoding::BASE64URL_NOPAD.encode(&seed),
        ));
    }
    let everything = format!("{relay_log}\n{agent_log}\n{client_logs}");
    for (what, secret) in &secrets {
        assert!(
            secret.len() >= 16,
            "{what} too short to grep for: {secret:?}"
        );
        assert!(
            !everything.contains(secret.as_str()),
            "the {what} appears in the logs"
        );
        // The secret part of a credential, without its prefix and id, must not leak either.
        if let Some(tail) = secret.rsplit('_').next().filter(|t| t.len() >= 16) {
            assert!(
                !everything.contains(tail),
                "the secret part of the {what} appears in the logs"
            );
        }
    }
}

#[test]
fn config_check_points_at_the_offending_line_and_the_binaries_refuse_a_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    let relay_toml = dir.path().join("relay.toml");
    std::fs::write(
        &relay_toml,
        "data_dir = \"/tmp/x\"\nlisten = \"127.0.0.1:0\"\nmetrix = \"127.0.0.1:9\"\n",
    )
    .unwrap();
    for args in [
        &["config", "check"][..],
        &["serve"][..],
        &["fleet", "list"][..],
    ] {
        let out = run(command("cmdop-relay")
            .arg("--config")
            .arg(&relay_toml)
            .args(args));
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("line 3") && err.contains("metrix") && err.contains("relay.toml"),
            "{args:?}: {err}"
        );
    }
    std::fs::write(&relay_toml, "listen = \"not an address\"\n").unwrap();
    let out = run(command("cmdop-relay")
        .arg("--config")
        .arg(&relay_toml)
        .args(["config", "check"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("line 1"), "{err}");
    // The environment beats the file, and a flag beats the environment.
    std::fs::write(&relay_toml, "data_dir = \"/nonexistent/from-file\"\n").unwrap();
    let data = dir.path().join("data");
    let out = run(command("cmdop-relay")
        .arg("--config")
        .arg(&relay_toml)
        .args(["fleet", "list"])
        .env("CMDOP_RELAY_DATA_DIR", &data));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(data.join("relay.db").is_file());
    let flag = dir.path().join("flag");
    let out = run(command("cmdop-relay")
        .arg("--config")
        .arg(&relay_toml)
        .args(["fleet", "list", "--data-dir"])
        .arg(&flag)
        .env("CMDOP_RELAY_DATA_DIR", &data));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(flag.join("relay.db").is_file());

    let agent_toml = dir.path().join("agent.toml");
    std::fs::write(&agent_toml, "relay = \"r:1\"\n\n[extra]\nx = 1\n").unwrap();
    let out = run(command("cmdop-agent")
        .arg("--config-dir")
        .arg(dir.path())
        .args(["config", "check"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("line 3") && err.contains("extra"),
        "{err}"
    );
}

#[test]
fn config_check_checks_what_serve_and_run_will_use() {
    let dir = tempfile::tempdir().unwrap();
    let relay_toml = dir.path().join("relay.toml");
    std::fs::write(
        &relay_toml,
        format!(
            "data_dir = {:?}\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let relay = |env: &[(&str, &str)], args: &[&str]| {
        let mut relay = command("cmdop-relay");
        relay
            .arg("--config")
            .arg(&relay_toml)
            .args(["config", "check"])
            .args(args);
        for (key, value) in env {
            relay.env(key, value);
        }
        run(&mut relay)
    };
    let ok = relay(&[], &[]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // The environment is what serve would use: a bad value is named with the variable it came from.
    for (key, value) in [
        ("CMDOP_RELAY_LISTEN", "garbage"),
        ("CMDOP_RELAY_METRICS", "nowhere"),
        ("CMDOP_RELAY_DRAIN_TIMEOUT", "soon"),
    ] {
        let out = relay(&[(key, value)], &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(key), "{key}: {err}");
        // serve refuses it in the same words.
        let serve = run(command("cmdop-relay")
            .arg("--config")
            .arg(&relay_toml)
            .arg("serve")
            .env(key, value));
        let serve_err = String::from_utf8_lossy(&serve.stderr);
        assert!(
            !serve.status.success() && serve_err.contains(key),
            "{key}: {serve_err}"
        );
    }
    // A flag is named as the flag.
    let out = relay(
        &[("CMDOP_RELAY_LISTEN", "garbage")],
        &["--listen", "also-garbage"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--listen") && err.contains("also-garbage"),
        "{err}"
    );
    let out = relay(&[("CMDOP_RELAY_LISTEN", "127.0.0.1:4999")], &[]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("127.0.0.1:4999"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The agent: the forward lists, labels and relay address of the file, the environment and flags.
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let key = dir.path().join("agent.key");
    std::fs::write(&key, "cmdop_ak_test\n").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let good = format!(
        "relay = \"relay.example:4433\"\nrelay_fingerprint = \"sha256:{}\"\nworkspace = \"prod\"\napi_key_file = {:?}\nhostname = \"web-1\"\nlabels = [\"role=web\"]\n",
        "ab".repeat(32),
        key.display().to_string()
    );
    let agent = |toml: &str, env: &[(&str, &str)], args: &[&str]| {
        std::fs::write(agent_dir.join("agent.toml"), toml).unwrap();
        let mut agent = command("cmdop-agent");
        agent
            .arg("--config-dir")
            .arg(&agent_dir)
            .args(["config", "check"])
            .args(args);
        for (key, value) in env {
            agent.env(key, value);
        }
        run(&mut agent)
    };
    let out = agent(&good, &[], &[]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(shown.contains("labels            = role=web"), "{shown}");
    // The fingerprint is shown in the one canonical form, whichever form was given.
    assert!(shown.contains("relay_fingerprint = SHA256:"), "{shown}");
    for (toml, env, args, words) in [
        (
            format!("{good}forward_deny = [\"10.0.0.0/99\"]\n"),
            vec![],
            vec![],
            "10.0.0.0/99",
        ),
        (
            good.clone(),
            vec![("CMDOP_RELAY", "127.0.0.1")],
            vec![],
            "CMDOP_RELAY",
        ),
        (good.clone(), vec![], vec!["--label", "Role=web"], "--label"),
        (
            good.replace("relay.example:4433", "relay.example"),
            vec![],
            vec![],
            "port is missing",
        ),
    ] {
        let out = agent(&toml, &env, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(words),
            "{words}: {err}"
        );
    }
}

#[test]
fn service_install_writes_a_unit_that_systemd_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let config_dir = dir.path().join("agent config");
    let unit_dir = dir.path().join("units");
    let agent = |args: &[&str]| {
        let mut agent = command("cmdop-agent");
        agent
            .arg("--config-dir")
            .arg(&config_dir)
            .args(["service"])
            .args(args);
        agent.arg("--unit-dir").arg(&unit_dir).arg("--no-systemctl");
        agent
    };
    let dry = run_ok(&mut agent(&["install", "--user", "--dry-run"]));
    assert!(
        dry.contains("# would write") && dry.contains("[Service]"),
        "{dry}"
    );
    assert!(!unit_dir.exists(), "--dry-run wrote something");

    for user in [true, false] {
        let mut install = agent(&["install"]);
        if user {
            install.arg("--user");
        }
        let out = run(&mut install);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let unit = std::fs::read_to_string(unit_dir.join("cmdop-agent.service")).unwrap();
        let exe = cmdop_tests::bin_dir().join("cmdop-agent");
        let exec_start = format!(
            "ExecStart={} --config-dir \"{}\"{} run\n",
            exe.display(),
            config_dir.display(),
            if user { "" } else { " --kek-backend file" }
        );
        assert!(unit.contains(&exec_start), "{exec_start} not in\n{unit}");
        assert!(unit.contains(if user {
            "WantedBy=default.target"
        } else {
            "WantedBy=multi-user.target"
        }));
        systemd_verify(&unit_dir.join("cmdop-agent.service"));
        let status = run_ok(&mut agent(&["status"]));
        assert!(status.contains("(installed)"), "{status}");
        run_ok(&mut agent(&["uninstall"]));
        assert!(!unit_dir.join("cmdop-agent.service").exists());
    }
    // The relay's unit as shipped, pointed at the built binary (verify checks that ExecStart exists).
    let shipped =
        std::fs::read_to_string(repo_root().join("dist/systemd/cmdop-relay.service")).unwrap();
    let relay = cmdop_tests::bin_dir().join("cmdop-relay");
    let unit = shipped.replace("/usr/local/bin/cmdop-relay", &relay.display().to_string());
    assert_ne!(unit, shipped);
    let relay_unit = dir.path().join("cmdop-relay.service");
    std::fs::write(&relay_unit, unit).unwrap();
    systemd_verify(&relay_unit);
}

#[test]
fn the_cli_completes_documents_itself_and_stops_quietly_on_a_closed_pipe() {
    // All three binaries: a completion script per shell naming a subcommand, and man pages.
    for (binary, subcommand) in [
        ("cmdop", "connect"),
        ("cmdop-relay", "serve"),
        ("cmdop-agent", "run"),
    ] {
        for (shell, marker) in [
            ("bash", "complete -F".to_owned()),
            ("zsh", format!("#compdef {binary}")),
            ("fish", format!("complete -c {binary}")),
        ] {
            let script = run_ok(command(binary).args(["completions", shell]));
            assert!(
                script.contains(&marker) && script.contains(subcommand),
                "{binary} {shell}: {script}"
            );
        }
    }
    let dir = tempfile::tempdir().unwrap();
    run_ok(command("cmdop").args(["man", "--out-dir"]).arg(dir.path()));
    run_ok(
        command("cmdop-relay")
            .args(["man", "--out-dir"])
            .arg(dir.path()),
    );
    run_ok(
        command("cmdop-agent")
            .args(["man", "--out-dir"])
            .arg(dir.path()),
    );
    for page in [
        "cmdop.1",
        "cmdop-connect.1",
        "cmdop-login.1",
        "cmdop-status.1",
        "cmdop-rsh.1",
        "cmdop-relay.1",
        "cmdop-relay-serve.1",
        "cmdop-agent.1",
        "cmdop-agent-run.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(text.contains(".TH"), "{page}: {text}");
    }
    // Every subcommand's --help carries an example.
    for args in [
        &["cmdop", "login"][..],
        &["cmdop", "logout"],
        &["cmdop", "status"],
        &["cmdop", "connect"],
        &["cmdop", "completions"],
        &["cmdop", "man"],
        &["cmdop", "rsh"],
        &["cmdop", "ssh-config"],
        &["cmdop", "connect", "exec"],
        &["cmdop", "connect", "proxy"],
        &["cmdop-relay", "completions"],
        &["cmdop-relay", "man"],
        &["cmdop-agent", "completions"],
        &["cmdop-agent", "man"],
        &["cmdop-relay", "serve"],
        &["cmdop-relay", "status"],
        &["cmdop-relay", "config", "check"],
        &["cmdop-relay", "fleet", "create"],
        &["cmdop-relay", "key", "create"],
        &["cmdop-relay", "token", "create"],
        &["cmdop-agent", "run"],
        &["cmdop-agent", "enroll"],
        &["cmdop-agent", "service", "install"],
        &["cmdop-agent", "config", "check"],
        &["cmdop-agent", "identity", "show"],
    ] {
        let (binary, rest) = args.split_first().unwrap();
        let help = run_ok(command(binary).args(rest).arg("--help"));
        assert!(
            help.contains("Example"),
            "{args:?} --help has no example:\n{help}"
        );
        assert!(
            !help.contains('\u{1b}'),
            "{args:?} --help is coloured on a pipe"
        );
    }
    // Output larger than a pipe buffer, into a pipe nobody reads.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = command("cmdop")
        .args(["man"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "exit {}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

/// `GET path` from the metrics endpoint; the whole HTTP response.
/// Issue 13, hole 10: deleting the CLI's `agent_keypair.bin` while its key file stays used to give the CLI a
/// new identity without a word. It is an error that names both files, and nothing is written.
#[test]
fn the_cli_refuses_to_replace_a_deleted_identity_seed() {
    let contour = Contour::with_machine();
    let member_key = contour.member_key("prod");
    let machines = contour.list("alice", &member_key, None);
    assert_eq!(machines.len(), 1);
    let identity = contour.root.path().join("clients/alice/client");
    let (seed, kek) = (
        identity.join("agent_keypair.bin"),
        identity.join("agent_keypair.key"),
    );
    assert!(seed.is_file() && kek.is_file());
    let key_before = std::fs::read(&kek).unwrap();
    std::fs::remove_file(&seed).unwrap();

    let out = run(contour
        .cli_with_key("alice", &member_key)
        .args(["connect", "--list", "--json"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&seed.display().to_string()) && stderr.contains(&kek.display().to_string()),
        "{stderr}"
    );
    assert!(!seed.exists(), "a new identity was created: {stderr}");
    assert_eq!(std::fs::read(&kek).unwrap(), key_before);
}

fn scrape(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// The value of one sample in a scrape (0 if absent).
fn metric(text: &str, sample: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0)
}

fn terminate(child: &std::process::Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn read_secret(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_owned()
}

/// Decrypts a version-1 seed file (`docs/identity.md`): a 38-byte header (magic, version, KEK location, key id,
/// nonce) authenticated as associated data, then the 32-byte seed sealed with AES-256-GCM under the KEK.
fn open_seed(path: &Path, kek: &[u8]) -> Vec<u8> {
    use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
    let file = std::fs::read(path).unwrap();
    let (header, sealed) = file.split_at(38);
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(kek).unwrap();
    let nonce = aes_gcm::Nonce::from_slice(header.get(26..38).unwrap());
    let seed = cipher
        .decrypt(
            nonce,
            Payload {
                msg: sealed,
                aad: header,
            },
        )
        .expect("the seed file opens with its key-encryption key");
    assert_eq!(seed.len(), 32);
    seed
}

fn base64(bytes: &[u8]) -> String {
    data_encoding::BASE64.encode(bytes)
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `systemd-analyze verify` on a unit, when the tool is installed; otherwise says why it is skipped.
fn systemd_verify(unit: &Path) {
    let probe = Command::new("systemd-analyze").arg("--version").output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!(
            "skipping `systemd-analyze verify {}`: systemd-analyze is not installed",
            unit.display()
        );
        return;
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemd-analyze verify {}:\n{}",
        unit.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}
